"""`kekctl audit verify` against audit logs written here by an independent implementation of the chain format
(Sources/Audit/AuditRecordFormat.swift): a good log passes, tampered ones fail at the right line, usage exit codes."""
import hashlib
import hmac
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bin_dir() -> Path:
    env = os.environ.get("KEKD_BIN_DIR")
    if env:
        return Path(env)
    out = subprocess.run(["swift", "build", "--show-bin-path"], cwd=REPO, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


KEKCTL = bin_dir() / "kekctl"
KEKD = bin_dir() / "kekd"
KEY = bytes(range(32))


def body(seq: int, prev_chain: bytes | None, stream: int) -> str:
    uid = json.dumps("uid-\u00e9-\t-\"" + str(seq), ensure_ascii=True)
    fields = [f'"seq":{seq}']
    if prev_chain is not None:
        fields.append(f'"prev_chain":"{prev_chain.hex()}"')
    fields += [
        '"time":"2026-11-25T13:35:18.123456789Z"',
        '"op":"Decrypt"',
        # ensure_ascii escaping is the format's: \" \\ \n ..., \u00XX for other controls, \uXXXX for non-ASCII
        f'"uid":{uid}',
        '"key_id":"k1"',
        '"backend":"file"',
        '"outcome":"OK"',
        '"latency_us":12',
        '"peer":{"pid":42,"uid":0,"gid":0}',
        '"connection":1',
        f'"stream":{stream}',
        f'"ciphertext_sha256":"{hashlib.sha256(bytes([seq])).hexdigest()[:16]}"',
    ]
    return "{" + ",".join(fields)


def chained_lines(count: int, key: bytes = KEY, first_seq: int = 1, chain: bytes = bytes(32)):
    """Lines for seq first_seq..; the first carries prev_chain (as the writer does for every new file)."""
    lines = []
    for seq in range(first_seq, first_seq + count):
        b = body(seq, chain if seq == first_seq else None, 2 * seq + 1)
        mac = hmac.new(key, chain + (b + "}").encode(), hashlib.sha256).digest()
        lines.append(b + f',"chain":"{mac.hex()}"}}')
        chain = mac
    return lines, chain


def write(path: Path, lines, newline_at_end=True):
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))


@pytest.fixture
def key_file(tmp_path):
    p = tmp_path / "audit-hmac.key"
    p.write_text(KEY.hex() + "\n")
    p.chmod(0o600)
    return p


def verify(path, key_file, *extra):
    return subprocess.run([str(KEKCTL), "audit", "verify", str(path), "--audit-hmac-key-file", str(key_file), *extra],
                          capture_output=True, text=True, timeout=60)


def test_good_log_verifies(tmp_path, key_file):
    log = tmp_path / "audit.log"
    write(log, chained_lines(20)[0])
    r = verify(log, key_file)
    assert r.returncode == 0, r.stderr
    assert "20 records" in r.stdout and "seq 1-20" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1


def test_rotated_predecessors_are_verified_as_one_chain(tmp_path, key_file):
    log = tmp_path / "audit.log"
    first, chain = chained_lines(10)
    second, _ = chained_lines(10, first_seq=11, chain=chain)
    write(Path(str(log) + ".1"), first)
    write(log, second)
    r = verify(log, key_file)
    assert r.returncode == 0, r.stderr
    assert "20 records" in r.stdout and "2 files" in r.stdout
    r = verify(log, key_file, "--no-rotated")
    assert r.returncode == 0 and "10 records verified (seq 11-20) in 1 file" in r.stdout, r.stdout + r.stderr
    # The predecessor altered: the failure names the rotated file.
    tampered = list(first)
    tampered[3] = tampered[3].replace('"latency_us":12', '"latency_us":13')
    write(Path(str(log) + ".1"), tampered)
    r = verify(log, key_file)
    assert r.returncode == 1
    assert "audit.log.1:4:" in r.stderr


@pytest.mark.parametrize("tamper, line, word", [
    (lambda ls: ls[:6] + ls[7:], 7, "missing"),
    (lambda ls: ls[:6] + [ls[6].replace('"outcome":"OK"', '"outcome":"NO"')] + ls[7:], 7, "altered"),
    (lambda ls: ls[:6] + [ls[7], ls[6]] + ls[8:], 7, "out of order"),
])
def test_tampered_log_fails_at_the_right_line(tmp_path, key_file, tamper, line, word):
    log = tmp_path / "audit.log"
    write(log, tamper(chained_lines(20)[0]))
    r = verify(log, key_file)
    assert r.returncode == 1, r.stdout
    assert f"audit.log:{line}:" in r.stderr and word in r.stderr, r.stderr


def test_truncated_last_line_fails(tmp_path, key_file):
    log = tmp_path / "audit.log"
    lines = chained_lines(5)[0]
    write(log, lines[:4] + [lines[4][:-20]], newline_at_end=False)
    r = verify(log, key_file)
    assert r.returncode == 1
    assert "audit.log:5:" in r.stderr and "truncated" in r.stderr


def test_wrong_key_fails(tmp_path):
    log = tmp_path / "audit.log"
    write(log, chained_lines(3)[0])
    other = tmp_path / "other.key"
    other.write_bytes(bytes(range(1, 33)))
    other.chmod(0o600)
    r = verify(log, other)
    assert r.returncode == 1 and "audit.log:1:" in r.stderr


@pytest.mark.parametrize("encode", [lambda k: k.hex().upper(), lambda k: __import__("base64").b64encode(k).decode()])
def test_key_file_text_formats(tmp_path, encode):
    log = tmp_path / "audit.log"
    write(log, chained_lines(3)[0])
    kf = tmp_path / "k"
    kf.write_text(encode(KEY) + "\n")
    kf.chmod(0o400)
    assert verify(log, kf).returncode == 0


def test_group_readable_key_file_is_refused(tmp_path, key_file):
    log = tmp_path / "audit.log"
    write(log, chained_lines(3)[0])
    key_file.chmod(0o640)
    r = verify(log, key_file)
    assert r.returncode == 1 and "group or others" in r.stderr


def test_missing_log_fails(tmp_path, key_file):
    r = verify(tmp_path / "nope.log", key_file)
    assert r.returncode == 1


@pytest.mark.parametrize("args", [
    ["audit"], ["audit", "bogus"], ["audit", "verify"], ["audit", "verify", "x"],
    ["audit", "verify", "x", "y", "--audit-hmac-key-file", "k"], ["audit", "verify", "x", "--unknown", "1"],
])
def test_usage_errors_exit_2(args):
    r = subprocess.run([str(KEKCTL), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (args, r.stdout, r.stderr)


def test_help():
    for args in (["audit", "--help"], ["audit", "verify", "--help"]):
        r = subprocess.run([str(KEKCTL), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "audit verify PATH" in r.stdout


def test_key_file_derives_the_chain_key(tmp_path):
    """--key-file: the chain key is HKDF-SHA256(audit_secret, salt=file_id, info="kekd audit-chain hmac key v1"),
    recomputed here from the key file `kekctl init` wrote."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    import base64

    key_path = tmp_path / "kek.json"
    r = subprocess.run([str(KEKCTL), "init", "--key-file", str(key_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    stored = json.loads(key_path.read_text())
    chain_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(stored["file_id"]),
                     info=b"kekd audit-chain hmac key v1").derive(base64.b64decode(stored["audit_secret"]))
    log = tmp_path / "audit.log"
    lines, _ = chained_lines(8, key=chain_key)
    write(log, lines)
    args = [str(KEKCTL), "audit", "verify", str(log), "--key-file", str(key_path)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "8 records" in r.stdout, r.stderr
    write(log, lines[:2] + lines[3:])
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "audit.log:3:" in r.stderr
    # Another key file derives another key; both flags at once is a usage error.
    other = tmp_path / "other.json"
    subprocess.run([str(KEKCTL), "init", "--key-file", str(other)], check=True, capture_output=True, timeout=60)
    write(log, lines)
    r = subprocess.run([str(KEKCTL), "audit", "verify", str(log), "--key-file", str(other)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "audit.log:1:" in r.stderr
    r = subprocess.run(args + ["--audit-hmac-key-file", str(other)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2


@pytest.mark.parametrize("mode, max_size", [("best-effort", "4096"), ("fail-closed", "104857600")])
def test_kekd_audit_log_verifies_end_to_end(kekd_factory, kms_pb, mode, max_size):
    """kekd's own log, written under 16 concurrent clients (rotating at 4 KiB in best-effort mode), verifies with the
    chain key derived from its key file; each Encrypt/Decrypt pair carries the same ciphertext hash; the usage file
    has the key's last Encrypt and Decrypt; a removed record is found."""
    import concurrent.futures
    import glob

    import grpc

    pb = kms_pb[0]
    k = kekd_factory(extra=["--audit-mode", mode, "--audit-max-size", max_size, "--audit-max-files", "1000"])
    channel = grpc.insecure_channel(k.target)
    stub = kms_pb[1].KeyManagementServiceStub(channel)

    def calls(i):
        enc = stub.Encrypt(pb.EncryptRequest(plaintext=os.urandom(32), uid=f"e2e-{i}"), timeout=10)
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid=f"e2e-{i}-d", key_id=enc.key_id,
                                       annotations=dict(enc.annotations)), timeout=10)
        stub.Status(pb.StatusRequest(), timeout=10)
        return enc.key_id, hashlib.sha256(enc.ciphertext).hexdigest()[:16]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(calls, range(64)))
    channel.close()
    assert k.stop() == 0

    files = sorted(glob.glob(k.audit + ".*"), key=lambda p: -int(p.rsplit(".", 1)[1])) + [k.audit]
    if mode == "best-effort":
        assert len(files) > 2, "rotation at 4 KiB"
    records = [json.loads(line) for f in files for line in open(f)]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    by_uid = {r["uid"]: r for r in records if r.get("uid")}
    for i, (key_id, digest) in enumerate(results):
        assert by_uid[f"e2e-{i}"]["ciphertext_sha256"] == digest and by_uid[f"e2e-{i}"]["key_id"] == key_id
        assert by_uid[f"e2e-{i}-d"]["ciphertext_sha256"] == digest and by_uid[f"e2e-{i}-d"]["outcome"] == "OK"

    args = [str(KEKCTL), "audit", "verify", k.audit, "--key-file", k.key_file]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{len(records)} records" in r.stdout and f"{len(files)} file" in r.stdout

    usage = json.loads(open(os.path.join(k.dir, "usage.json")).read())["keys"][results[0][0]]
    assert usage["last_encrypt"].endswith("Z") and usage["last_decrypt"].endswith("Z")
    assert oct(os.stat(os.path.join(k.dir, "usage.json")).st_mode & 0o777) == "0o600"

    # Remove the second record of a file that has at least three (the newest file may hold just one).
    target = next(f for f in reversed(files) if len(open(f).read().splitlines()) >= 3)
    lines = open(target).read().splitlines()
    write(Path(target), lines[:1] + lines[2:])
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"{os.path.basename(target)}:2:" in r.stderr, r.stderr


def test_cut_tail_passes_plain_verify_but_not_a_witness(tmp_path, key_file):
    """Records cut off the end leave a valid chain: plain verify passes (documented), but --expect-seq /
    --expect-head with what an off-node witness saw earlier fail, naming the last seq seen."""
    log = tmp_path / "audit.log"
    lines, head = chained_lines(20)
    write(log, lines)
    head16 = head.hex()[:16]
    ok = verify(log, key_file, "--expect-seq", "20", "--expect-head", head16)
    assert ok.returncode == 0 and "witnessed seq 20" in ok.stdout, ok.stderr

    write(log, lines[:15])
    assert verify(log, key_file).returncode == 0
    for witness in (["--expect-seq", "20"], ["--expect-head", head16], ["--expect-seq", "20", "--expect-head", head16]):
        r = verify(log, key_file, *witness)
        assert r.returncode == 1 and "last seq seen 15" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # A witness taken before the cut point still holds.
    assert verify(log, key_file, "--expect-seq", "15").returncode == 0
    for bad in (["--expect-seq", "0"], ["--expect-seq", "x"], ["--expect-head", "abc"], ["--expect-head", "z" * 16]):
        assert verify(log, key_file, *bad).returncode == 2


def metric_samples(port):
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def chain_head(port):
    """(kekd_audit_last_seq, the head label of kekd_audit_chain_head_info), as Prometheus would scrape them."""
    samples = metric_samples(port)
    heads = [dict(labels)["head"] for (name, labels), v in samples.items() if name == "kekd_audit_chain_head_info"]
    assert len(heads) == 1
    return int(samples[("kekd_audit_last_seq", ())]), heads[0]


def test_kekd_exports_its_chain_head_and_a_cut_is_caught_against_it(kekd_factory, kms_pb):
    import time

    import grpc

    k = kekd_factory(extra=["--audit-mode", "fail-closed"])   # a record is on disk before its call returns
    channel = grpc.insecure_channel(k.target)
    stub = kms_pb[1].KeyManagementServiceStub(channel)
    for _ in range(6):
        stub.Status(kms_pb[0].StatusRequest(), timeout=10)
    channel.close()
    seq, head = chain_head(k.health_port)
    assert seq >= 6 and len(head) == 16
    assert k.stop() == 0
    lines = Path(k.audit).read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["seq"] == seq and last["chain"].startswith(head)

    base = [str(KEKCTL), "audit", "verify", k.audit, "--key-file", k.key_file]
    witness = ["--expect-seq", str(seq), "--expect-head", head]
    assert subprocess.run(base + witness, capture_output=True, timeout=60).returncode == 0
    write(Path(k.audit), lines[:-3])
    assert subprocess.run(base, capture_output=True, timeout=60).returncode == 0
    r = subprocess.run(base + witness, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"last seq seen {seq - 3}" in r.stderr, r.stderr

    # kekd restarted on the cut log continues from the cut; its new head no longer matches the witness.
    k2 = kekd_factory(subdir=k.dir.name)
    deadline = time.time() + 10
    while chain_head(k2.health_port)[0] != seq - 3 and time.time() < deadline:
        time.sleep(0.1)
    assert chain_head(k2.health_port)[0] == seq - 3


def start_fails(args, timeout=30):
    p = subprocess.run([str(KEKD), "serve", *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr.strip()


def test_missing_or_replaced_chain_key_stops_kekd_unless_a_new_chain_is_accepted(kekd_factory, kms_pb, tmp_path):
    """The file backend with --audit-hmac-key-file: a vanished key file, or a replaced one, next to existing records
    exits 5 with one line; --audit-new-chain starts, rotates the old log away and says so in the first record."""
    import secrets

    chain_key = tmp_path / "chain.key"
    chain_key.write_text(secrets.token_hex(32))
    chain_key.chmod(0o600)
    k = kekd_factory(extra=["--audit-mode", "fail-closed", "--audit-hmac-key-file", str(chain_key)], subdir="s")
    status_once(k, kms_pb)
    assert k.stop() == 0
    old_log = Path(k.audit).read_bytes()
    assert old_log

    args = ["--listen", f"unix://{k.dir}/kekd2.sock", "--key-file", k.key_file, "--state-dir", str(k.dir),
            "--audit-log", k.audit, "--health-addr", "off", "--audit-hmac-key-file", str(chain_key)]
    original_key = chain_key.read_bytes()
    chain_key.unlink()
    rc, err = start_fails(args)
    assert rc == 5 and "missing" in err and "--audit-new-chain" in err and len(err.splitlines()) == 1, err
    chain_key.write_text(secrets.token_hex(32))   # a different key at the same path
    chain_key.chmod(0o600)
    rc, err = start_fails(args)
    assert rc == 5 and "another chain key" in err and "--audit-new-chain" in err and len(err.splitlines()) == 1, err
    assert Path(k.audit).read_bytes() == old_log   # refused without touching the log

    chain_key.unlink()
    k2 = kekd_factory(extra=["--audit-mode", "fail-closed", "--audit-hmac-key-file", str(chain_key), "--audit-new-chain"],
                      subdir="s")
    status_once(k2, kms_pb)
    assert k2.stop() == 0
    warnings = [json.loads(line) for line in k2.stderr_text().splitlines() if "new chain" in line]
    assert warnings and all(w["level"] == "warn" for w in warnings)
    assert Path(k.audit + ".1").read_bytes() == old_log
    first = json.loads(Path(k.audit).read_text().splitlines()[0])
    assert first["seq"] == 1 and first["op"] == "AuditNewChain" and "--audit-new-chain" in first["message"]
    r = verify(k.audit, chain_key, "--no-rotated")
    assert r.returncode == 0, r.stderr
    # The old log still verifies with the old key.
    old_key = tmp_path / "old.key"
    old_key.write_bytes(original_key)
    old_key.chmod(0o600)
    assert verify(k.audit + ".1", old_key, "--no-rotated").returncode == 0


def status_once(k, kms_pb):
    import grpc
    channel = grpc.insecure_channel(k.target)
    try:
        kms_pb[1].KeyManagementServiceStub(channel).Status(kms_pb[0].StatusRequest(), timeout=10)
    finally:
        channel.close()


def test_logs_from_before_the_upgrade_still_verify_with_a_first_format_key_file(tmp_path):
    """A first-format key file's file id (the salt of its audit chain key) changed from one SHA-256 of the key to
    PBKDF2; logs the first release wrote under it still verify with --key-file. Chain keys recomputed here."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = os.urandom(32)
    while all(0x20 <= b < 0x7F or b in (9, 10, 13) for b in key):
        key = os.urandom(32)
    key_path = tmp_path / "legacy.key"
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    audit_secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                        info=b"kekd legacy key file audit secret v1").derive(key)

    def chain_key(file_id):
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=b"kekd audit-chain hmac key v1").derive(audit_secret)

    first_release = hashlib.sha256(b"kekd legacy key file id v1\0" + key).digest()[:16]
    current = hashlib.pbkdf2_hmac("sha256", key, b"kekd legacy key file id v2", 100_000, 16)
    for name, ck in (("old.log", chain_key(first_release)), ("new.log", chain_key(current))):
        log = tmp_path / name
        write(log, chained_lines(6, key=ck)[0])
        r = subprocess.run([str(KEKCTL), "audit", "verify", str(log), "--key-file", str(key_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "6 records" in r.stdout, r.stderr
    # Any other key still fails.
    log = tmp_path / "foreign.log"
    write(log, chained_lines(6, key=os.urandom(32))[0])
    r = subprocess.run([str(KEKCTL), "audit", "verify", str(log), "--key-file", str(key_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "foreign.log:1:" in r.stderr
