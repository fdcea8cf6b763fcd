"""kekd driven by a real, independent gRPC client (grpcio, C-core) with stubs generated from Proto/."""
import concurrent.futures
import json
import os
import re

import grpc
import pytest

FQDN = re.compile(r"^(?=.{1,253}\.?$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+\.?$")
ENC = "/v2.KeyManagementService/Encrypt"


def stub_for(kekd, kms_pb, options=()):
    channel = grpc.insecure_channel(kekd.target, options=list(options))
    return channel, kms_pb[1].KeyManagementServiceStub(channel)


def test_status(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    resp = stub.Status(pb.StatusRequest(), timeout=3)
    assert resp.version == "v2"
    assert resp.healthz == "ok"
    assert 0 < len(resp.key_id.encode()) <= 1024
    channel.close()


@pytest.mark.parametrize("size", [1, 32, 64 * 1024, 1024 * 1024])
def test_round_trip_sizes(kekd, kms_pb, size):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    plaintext = os.urandom(size)
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=plaintext, uid=f"uid-{size}"), timeout=10)
    status = stub.Status(pb.StatusRequest(), timeout=3)
    assert enc.key_id == status.key_id
    if size >= 16:  # a shorter plaintext can appear in random bytes by chance
        assert plaintext not in enc.ciphertext
    dec = stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="d", key_id=enc.key_id,
                                         annotations=dict(enc.annotations)), timeout=10)
    assert dec.plaintext == plaintext
    channel.close()


def test_dek_sized_output_within_apiserver_limits(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=os.urandom(32), uid="u"), timeout=3)
    assert 0 < len(enc.ciphertext) <= 1024
    assert 0 < len(enc.key_id.encode()) <= 1024
    total = 0
    for k, v in enc.annotations.items():
        assert FQDN.match(k), k
        total += len(k) + len(v)
    assert total <= 32 * 1024
    channel.close()


def test_64_concurrent_calls_on_one_channel_and_across_8(kekd, kms_pb):
    pb = kms_pb[0]
    channels = [grpc.insecure_channel(kekd.target) for _ in range(8)]
    stubs = [kms_pb[1].KeyManagementServiceStub(c) for c in channels]

    def one(i, stub):
        pt = os.urandom(32)
        enc = stub.Encrypt(pb.EncryptRequest(plaintext=pt, uid=str(i)), timeout=10)
        dec = stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid=str(i), key_id=enc.key_id,
                                             annotations=dict(enc.annotations)), timeout=10)
        return dec.plaintext == pt

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        single = list(pool.map(lambda i: one(i, stubs[0]), range(64)))
        spread = list(pool.map(lambda i: one(i, stubs[i % 8]), range(64)))
    assert all(single) and len(single) == 64
    assert all(spread) and len(spread) == 64
    for c in channels:
        c.close()


def test_futures_pipelined_on_one_connection(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    futures = [stub.Status.future(pb.StatusRequest(), timeout=10) for _ in range(256)]
    assert all(f.result().healthz == "ok" for f in futures)
    channel.close()


def test_flow_control_many_large_requests(kekd, kms_pb):
    """Far more than 64 KiB of request and response bodies on one connection: windows must be replenished."""
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    pt = os.urandom(30 * 1024)
    for i in range(60):
        enc = stub.Encrypt(pb.EncryptRequest(plaintext=pt, uid=str(i)), timeout=5)
        dec = stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid=str(i), key_id=enc.key_id,
                                             annotations=dict(enc.annotations)), timeout=5)
        assert dec.plaintext == pt
    channel.close()


def test_deadline_exceeded_then_still_healthy(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    with pytest.raises(grpc.RpcError) as err:
        stub.Encrypt(pb.EncryptRequest(plaintext=os.urandom(1024 * 1024), uid="late"), timeout=0.000001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Status(pb.StatusRequest(), timeout=3).healthz == "ok"
    channel.close()


def test_unknown_method_and_v1beta1(kekd, kms_pb):
    channel = grpc.insecure_channel(kekd.target)
    for path in ["/v2.KeyManagementService/Nope", "/v1beta1.KeyManagementService/Version", "/other.Service/Status"]:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=3)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, path
    channel.close()


def test_malformed_protobuf_is_invalid_argument(kekd, kms_pb):
    channel = grpc.insecure_channel(kekd.target)
    call = channel.unary_unary(ENC, request_serializer=None, response_deserializer=None)
    for garbage in [b"\x0a\xff", b"\x0a\x05ab", b"\x0f", b"\x12\x02\xff\xfe"]:
        with pytest.raises(grpc.RpcError) as err:
            call(garbage, timeout=3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage
    channel.close()


def test_tampered_and_foreign_ciphertexts(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    secret = os.urandom(32)
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=secret, uid="t"), timeout=3)
    ann = dict(enc.annotations)
    for i in range(len(enc.ciphertext)):
        bad = bytearray(enc.ciphertext)
        bad[i] ^= 0x40
        with pytest.raises(grpc.RpcError) as err:
            stub.Decrypt(pb.DecryptRequest(ciphertext=bytes(bad), uid="t", key_id=enc.key_id, annotations=ann), timeout=3)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), i
        assert secret.hex() not in (err.value.details() or "")
    for bad in [enc.ciphertext[:-1], b"", b"\x00" * 60, os.urandom(80)]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Decrypt(pb.DecryptRequest(ciphertext=bad, uid="t", key_id=enc.key_id, annotations=ann), timeout=3)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="t", key_id=enc.key_id + "x", annotations=ann), timeout=3)
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    channel.close()


def test_oversized_message_resource_exhausted(kekd_factory, kms_pb):
    k = kekd_factory(extra=["--max-message-size", "64Ki"])
    pb = kms_pb[0]
    channel, stub = stub_for(k, kms_pb)
    with pytest.raises(grpc.RpcError) as err:
        stub.Encrypt(pb.EncryptRequest(plaintext=os.urandom(100 * 1024), uid="big"), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Status(pb.StatusRequest(), timeout=3).healthz == "ok"
    channel.close()


def test_compressed_request_unimplemented(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    with pytest.raises(grpc.RpcError) as err:
        stub.Encrypt(pb.EncryptRequest(plaintext=b"x" * 4096, uid="gz"), timeout=3, compression=grpc.Compression.Gzip)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert stub.Status(pb.StatusRequest(), timeout=3).healthz == "ok"
    channel.close()


def test_every_call_audited_and_no_secret_anywhere(kekd, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    secrets = [os.urandom(32) for _ in range(20)]
    n = 0
    for s in secrets:
        enc = stub.Encrypt(pb.EncryptRequest(plaintext=s, uid="audit"), timeout=3)
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="audit", key_id=enc.key_id,
                                       annotations=dict(enc.annotations)), timeout=3)
        n += 2
    stub.Status(pb.StatusRequest(), timeout=3)
    n += 1
    bad = channel.unary_unary("/v2.KeyManagementService/Nope", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError):
        bad(b"", timeout=3)
    n += 1
    channel.close()
    assert kekd.stop() == 0
    import base64
    key_file = json.load(open(kekd.key_file))
    keys = [base64.b64decode(v["key"]) for v in key_file["versions"]]
    if key_file.get("audit_secret"):
        keys.append(base64.b64decode(key_file["audit_secret"]))
    assert keys and all(len(k) == 32 for k in keys[:1])
    records = [json.loads(line) for line in open(kekd.audit)]
    calls = [r for r in records if r.get("op") in ("Status", "Encrypt", "Decrypt", "/v2.KeyManagementService/Nope")]
    assert len(calls) == n
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    for r in calls:
        assert r["outcome"] in ("OK", "UNIMPLEMENTED") and r["backend"] == "file" and r["peer"]["pid"] > 0
    assert everything_is_clean(kekd, secrets + keys)


def everything_is_clean(kekd, secrets):
    everything = b""
    for name in sorted(os.listdir(kekd.dir)):
        p = kekd.dir / name
        if p.is_file() and name != "kek.json":
            everything += p.read_bytes()
    import base64
    for s in secrets:
        for form in (s, s.hex().encode(), base64.b64encode(s)):
            if form in everything:
                return False
    return True
