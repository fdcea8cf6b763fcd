#!/usr/bin/env python3
"""Differential partner of Tests/HPACKTests/DifferentialTests.swift (not a pytest file).

Usage: hpack_differential.py INPUT.json OUTPUT.json

INPUT: {"cases": [{"huffman": bool, "steps": [{"tableSize": int|null, "headers": [[name_hex, value_hex]...],
                                               "swiftBlock": hex}]}],
        "fuzz": [[block_hex, ...], ...]}
For each case, one Python hpack.Encoder encodes every step's headers (after applying tableSize, if any), and one
hpack.Decoder decodes every swiftBlock (with max_allowed_table_size following tableSize, as after a SETTINGS ACK).
Each fuzz entry is a sequence of blocks decoded by a fresh Decoder, stopping at the first error.
OUTPUT: {"cases": [{"pythonBlocks": [hex...], "pythonDecoded": [result...]}], "fuzz": [[result...]...]}
where result is {"headers": [[name_hex, value_hex]...]} or {"error": "ExceptionName"}.
"""
import json
import sys

import hpack

TABLE_SIZE = 4096
HUGE_LIST = 1 << 30


def decode(decoder, block_hex):
    try:
        headers = decoder.decode(bytes.fromhex(block_hex), raw=True)
        return {"headers": [[name.hex(), value.hex()] for name, value in headers]}
    except Exception as error:  # any rejection counts; the Swift side compares accept/reject
        return {"error": type(error).__name__}


def run_case(case):
    encoder = hpack.Encoder()
    decoder = hpack.Decoder(max_header_list_size=HUGE_LIST)
    decoder.max_allowed_table_size = TABLE_SIZE
    blocks, decoded = [], []
    for step in case["steps"]:
        size = step.get("tableSize")
        if size is not None:
            encoder.header_table_size = size
            decoder.max_allowed_table_size = size
        headers = [(bytes.fromhex(n), bytes.fromhex(v)) for n, v in step["headers"]]
        blocks.append(encoder.encode(headers, huffman=case["huffman"]).hex())
        decoded.append(decode(decoder, step["swiftBlock"]))
    return {"pythonBlocks": blocks, "pythonDecoded": decoded}


def run_fuzz(sequence):
    decoder = hpack.Decoder(max_header_list_size=HUGE_LIST)
    decoder.max_allowed_table_size = TABLE_SIZE
    results = []
    for block in sequence:
        result = decode(decoder, block)
        results.append(result)
        if "error" in result:
            break
    return results


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    response = {
        "cases": [run_case(case) for case in request["cases"]],
        "fuzz": [run_fuzz(sequence) for sequence in request["fuzz"]],
    }
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(response, f)


if __name__ == "__main__":
    main()
