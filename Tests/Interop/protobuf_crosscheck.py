#!/usr/bin/env python3
"""Cross-checks kekd's Swift protobuf codec against Google's `protobuf` package.

Run by Tests/ProtobufTests/CrossCheckTests.swift (one process per direction); not a pytest file.

  generate PROTO_ROOT OUT_JSON COUNT SEED
      Builds COUNT random wire inputs per message type with Google's encoder (random bytes, unicode strings, maps
      of random sizes with entries in shuffled order and duplicate keys, repeated scalar fields, unknown fields of
      every wire type, known field numbers with foreign wire types, hand-made map entries missing key or value) and
      mutated copies of them (truncated, bytes flipped or inserted). Google's parser is the oracle: each case
      records whether it parses and, if so, every field value.
  verify PROTO_ROOT IN_JSON
      Parses every Swift-encoded case with Google's parser, compares the fields with what Swift meant to encode, and
      checks Swift's bytes equal the deterministic encoding (see deterministic_encoding). Exits 1 listing mismatches.

JSON: {"cases": [{"type": "DecryptRequest", "wire": HEX, "ok": bool, "error": null, "map_entry_dropped": bool,
                  "fields": {"ciphertext": HEX, "uid": HEX(UTF-8), "annotations": [[KEYHEX, VALUEHEX], ...]}}]}
"""
import json
import os
import random
import sys
import tempfile

MESSAGES = {
    "StatusRequest": {},
    "StatusResponse": {"version": (1, "string"), "healthz": (2, "string"), "key_id": (3, "string")},
    "EncryptRequest": {"plaintext": (1, "bytes"), "uid": (2, "string")},
    "EncryptResponse": {"ciphertext": (1, "bytes"), "key_id": (2, "string"), "annotations": (3, "map")},
    "DecryptRequest": {"ciphertext": (1, "bytes"), "uid": (2, "string"), "key_id": (3, "string"),
                       "annotations": (4, "map")},
    "DecryptResponse": {"plaintext": (1, "bytes")},
}


def load_module(proto_root):
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="kekd-pb-")
    rc = protoc.main(["protoc", "-I", proto_root, "--python_out", out, "kms/v2/api.proto"])
    if rc != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from kms.v2 import api_pb2
    return api_pb2


# --- raw wire helpers (for what Google's encoder will not produce) ---

def varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field, wire_type):
    return varint(field << 3 | wire_type)


def length_delimited(field, payload):
    return tag(field, 2) + varint(len(payload)) + payload


def random_bytes(rng):
    size = rng.choice([0, 0, 1, 32, 32, rng.randrange(0, 300), rng.randrange(0, 3000)])
    return bytes(rng.getrandbits(8) for _ in range(size))


def random_string(rng):
    size = rng.choice([0, 1, rng.randrange(0, 40), rng.randrange(0, 200)])
    chars = []
    for _ in range(size):
        kind = rng.random()
        if kind < 0.5:
            chars.append(chr(rng.randrange(0x20, 0x7F)))
        elif kind < 0.7:
            chars.append(chr(rng.randrange(0x80, 0x800)))
        elif kind < 0.9:
            code = rng.randrange(0x800, 0x10000)
            chars.append(chr(code if not 0xD800 <= code < 0xE000 else 0xE000))
        else:
            chars.append(chr(rng.randrange(0x10000, 0x110000)))
    return "".join(chars)


def unknown_field(rng, fields_in_use):
    """An unknown field of a random valid wire type, or a known field number with a wire type it does not have."""
    numbers = [n for n in (5, 6, 15, 16, 100, 2047, 2048, 262143, 536870911) if n not in fields_in_use]
    number = rng.choice(numbers + list(fields_in_use)) if fields_in_use and rng.random() < 0.3 else rng.choice(numbers)
    wire_type = rng.choice([0, 1, 5] if number in fields_in_use else [0, 1, 2, 5])
    if wire_type == 0:
        return tag(number, 0) + varint(rng.choice([0, 1, 127, 128, 2**32, 2**63, 2**64 - 1, rng.getrandbits(64)]))
    if wire_type == 1:
        return tag(number, 1) + rng.getrandbits(64).to_bytes(8, "little")
    if wire_type == 5:
        return tag(number, 5) + rng.getrandbits(32).to_bytes(4, "little")
    return length_delimited(number, random_bytes(rng))


def odd_map_entry(rng, field):
    """Entries Google's encoder never writes: key or value missing, fields reversed, unknown fields inside."""
    key = random_string(rng).encode()
    value = random_bytes(rng)
    shape = rng.randrange(4)
    if shape == 0:
        entry = length_delimited(2, value)
    elif shape == 1:
        entry = length_delimited(1, key)
    elif shape == 2:
        entry = length_delimited(2, value) + length_delimited(1, key)
    else:
        entry = length_delimited(1, key) + tag(7, 0) + varint(5) + length_delimited(2, value) + tag(9, 5) + b"\0\0\0\0"
    return length_delimited(field, entry)


def build_wire(pb, name, rng):
    cls = getattr(pb, name)
    spec = MESSAGES[name]
    parts = []
    for _ in range(rng.choice([1, 1, 2])):  # a second copy of the scalars exercises "last one wins"
        msg = cls()
        for field, (_, kind) in spec.items():
            if kind == "bytes" and rng.random() < 0.85:
                setattr(msg, field, random_bytes(rng))
            elif kind == "string" and rng.random() < 0.85:
                setattr(msg, field, random_string(rng))
        parts.append(msg.SerializeToString())
    for field, (number, kind) in spec.items():
        if kind != "map":
            continue
        keys = [random_string(rng) for _ in range(rng.choice([0, 1, 2, rng.randrange(0, 12)]))]
        keys += rng.sample(keys, min(len(keys), rng.randrange(0, 3)))  # duplicate keys: the later entry wins
        for key in keys:
            msg = cls()
            getattr(msg, field)[key] = random_bytes(rng)
            parts.append(msg.SerializeToString())
        for _ in range(rng.choice([0, 0, 1, 2])):
            parts.append(odd_map_entry(rng, number))
    in_use = {number for number, _ in spec.values()}
    for _ in range(rng.choice([0, 1, 2, 4])):
        parts.append(unknown_field(rng, in_use))
    rng.shuffle(parts)
    return b"".join(parts)


def mutate(wire, rng):
    data = bytearray(wire)
    choice = rng.randrange(3)
    if choice == 0 and data:
        del data[rng.randrange(len(data)):]
    elif choice == 1 and data:
        data[rng.randrange(len(data))] = rng.getrandbits(8)
    else:
        data.insert(rng.randrange(len(data) + 1), rng.getrandbits(8))
    return bytes(data)


def divergences(data, map_field=None, inside_entry=False):
    """Where Google's Python parser (upb) is more lenient than protobuf-go, whose rules kekd follows.

    For input upb accepted, walks it in decoding order (descending into map entries of field `map_field`) and returns
    (first_error, map_entry_dropped): first_error is the error kekd must report, or None -- "wire type N" for a group
    (wire type 3/4; upb skips groups as unknown fields), "field 0" (upb accepts field 0 with wire types 1, 2 and 5),
    "varint overflow" (upb ignores the excess bits of a 10th varint byte); map_entry_dropped is True if a map entry
    held an unknown field before that point (upb then keeps the whole entry as an unknown field instead of in the
    map, so its map is not comparable; protobuf-go and kekd skip the unknown field and keep the entry).
    """
    index = 0
    dropped = False
    while index < len(data):
        key, index, overflow = read_varint(data, index)
        if overflow:
            return "varint overflow", dropped
        number, wire_type = key >> 3, key & 7
        if wire_type in (3, 4):
            return f"wire type {wire_type}", dropped
        if number == 0:
            return "field 0", dropped
        known = (number in (1, 2) and wire_type == 2) if inside_entry else None
        if inside_entry and not known:
            dropped = True
        if wire_type == 0:
            _, index, overflow = read_varint(data, index)
            if overflow:
                return "varint overflow", dropped
        elif wire_type == 1:
            index += 8
        elif wire_type == 5:
            index += 4
        else:
            length, index, _ = read_varint(data, index)
            if not inside_entry and number == map_field:
                error, entry_dropped = divergences(data[index:index + length], inside_entry=True)
                dropped = dropped or entry_dropped
                if error:
                    return error, dropped
            index += length
    return None, dropped


def read_varint(data, index):
    """(value, next index, overflow): overflow if a 10th byte carries more than the 64th bit."""
    value = shift = 0
    while True:
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & (2**64 - 1), index, shift == 63 and byte > 1
        shift += 7


def fields_of(msg, name):
    out = {}
    for field, (_, kind) in MESSAGES[name].items():
        value = getattr(msg, field)
        if kind == "bytes":
            out[field] = value.hex()
        elif kind == "string":
            out[field] = value.encode("utf-8").hex()
        else:
            out[field] = sorted([key.encode("utf-8").hex(), val.hex()] for key, val in value.items())
    return out


def generate(proto_root, out_path, count, seed):
    from google.protobuf.message import DecodeError
    pb = load_module(proto_root)
    rng = random.Random(seed)
    cases = []
    for name in MESSAGES:
        cls = getattr(pb, name)
        for index in range(count):
            wire = build_wire(pb, name, rng)
            if index % 3 == 2:
                wire = mutate(wire, rng)
            case = {"type": name, "wire": wire.hex(), "ok": True, "error": None, "map_entry_dropped": False}
            try:
                msg = cls.FromString(wire)
            except DecodeError:
                case["ok"] = False
            else:
                case["fields"] = fields_of(msg, name)
                maps = [number for number, kind in MESSAGES[name].values() if kind == "map"]
                case["error"], case["map_entry_dropped"] = divergences(wire, maps[0] if maps else None)
            cases.append(case)
    with open(out_path, "w") as out:
        json.dump({"cases": cases}, out)


def deterministic_encoding(pb, name, msg):
    """Google's encoding of the scalar fields, then one map entry at a time in key-byte order (as protobuf-go and
    C++ order them; upb's own deterministic mode puts a key after its extensions, e.g. "ab" before "a")."""
    cls = getattr(pb, name)
    scalars = cls()
    scalars.CopyFrom(msg)
    entries = []
    for field, (_, kind) in MESSAGES[name].items():
        if kind == "map":
            scalars.ClearField(field)
            for key in sorted(getattr(msg, field), key=lambda text: text.encode("utf-8")):
                single = cls()
                getattr(single, field)[key] = getattr(msg, field)[key]
                entries.append(single.SerializeToString())
    return scalars.SerializeToString() + b"".join(entries)


def verify(proto_root, in_path):
    pb = load_module(proto_root)
    with open(in_path) as source:
        cases = json.load(source)["cases"]
    failures = []
    for number, case in enumerate(cases):
        name = case["type"]
        wire = bytes.fromhex(case["wire"])
        try:
            msg = getattr(pb, name).FromString(wire)
        except Exception as error:  # noqa: BLE001 - any parse failure is a mismatch to report
            failures.append(f"case {number} {name}: Google cannot parse Swift's bytes: {error}")
            continue
        got = fields_of(msg, name)
        want = {field: sorted(value) if isinstance(value, list) else value for field, value in case["fields"].items()}
        if got != want:
            failures.append(f"case {number} {name}: fields differ: google={got} swift={want}")
        expected = deterministic_encoding(pb, name, msg)
        if expected != wire:
            failures.append(f"case {number} {name}: Swift's bytes differ from the deterministic encoding: "
                            f"expected={expected.hex()} swift={wire.hex()}")
    print(f"verified {len(cases)} Swift-encoded messages, {len(failures)} mismatches")
    for failure in failures[:20]:
        print(failure)
    return 1 if failures else 0


def main(argv):
    if len(argv) == 6 and argv[1] == "generate":
        generate(argv[2], argv[3], int(argv[4]), int(argv[5]))
        return 0
    if len(argv) == 4 and argv[1] == "verify":
        return verify(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
