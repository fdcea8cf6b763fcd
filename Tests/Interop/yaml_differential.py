"""Differential check for Tests/YAMLTests: PyYAML reads the same documents as the Swift YAML reader.

Input JSON: [{"text": ..., "expect": "valid"|"invalid", "swift": <documents as plain JSON> | null}, ...].
A document value is ["map", [[key, value], ...]], ["seq", [...]], a string, or null, so order and the difference
between a quoted "null" and a null are kept. Output JSON: a list of mismatch descriptions (empty when all agree).
"""
import json
import sys

import yaml


def plain(node):
    if isinstance(node, yaml.MappingNode):
        return ["map", [[plain(k), plain(v)] for k, v in node.value]]
    if isinstance(node, yaml.SequenceNode):
        return ["seq", [plain(v) for v in node.value]]
    if node.tag == "tag:yaml.org,2002:null":
        return None
    return node.value


def main():
    cases = json.load(open(sys.argv[1]))
    mismatches = []
    for number, case in enumerate(cases):
        try:
            python = [plain(d) if d is not None else None for d in yaml.compose_all(case["text"], Loader=yaml.SafeLoader)]
        except yaml.YAMLError as error:
            python = None
            reason = str(error).replace("\n", " ")
        if case["expect"] == "invalid":
            if python is not None:
                mismatches.append(f"case {number}: PyYAML accepted a document Swift must reject: {python!r}")
            continue
        if python is None:
            mismatches.append(f"case {number}: PyYAML rejected it ({reason}) but Swift read {case['swift']!r}")
        elif python != case["swift"]:
            mismatches.append(f"case {number}: PyYAML {python!r} != Swift {case['swift']!r}\n{case['text']}")
    json.dump({"cases": len(cases), "mismatches": mismatches}, open(sys.argv[2], "w"))


main()
