"""kekd --backend pkcs11 against SoftHSM2 (Debian's softhsm2): a token the test makes in a temp folder with its own
SOFTHSM2_CONF, keys made by kekctl pkcs11, the KMS API driven by grpcio. HSM work is counted from outside kekd by a
PKCS#11 shim (pkcs11_counting_shim.c, built here with cc) that forwards to SoftHSM."""
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import time

import grpc
import pytest

from conftest import KEKCTL, KEKD
from test_kekd_lifecycle import http_get

# The grpcio interop suite, run against this backend too (the tests that read the key file are left out).
from test_grpc_interop import (  # noqa: F401  (collected here with the pkcs11 `kekd` fixture below)
    test_status, test_round_trip_sizes, test_dek_sized_output_within_apiserver_limits,
    test_64_concurrent_calls_on_one_channel_and_across_8, test_futures_pipelined_on_one_connection,
    test_flow_control_many_large_requests, test_deadline_exceeded_then_still_healthy, test_unknown_method_and_v1beta1,
    test_malformed_protobuf_is_invalid_argument, test_tampered_and_foreign_ciphertexts, test_compressed_request_unimplemented,
)

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
pytestmark = pytest.mark.skipif(not os.path.exists(SOFTHSM) or shutil.which("softhsm2-util") is None,
                                reason="softhsm2 not installed (.ci/run installs it)")
TOKEN = "kekd-test"
PIN = "4711-pin"


class SoftHSM:
    """A SoftHSM token in a private folder; `flags` are kekd's/kekctl's --pkcs11-* flags for it."""

    def __init__(self, root: pathlib.Path, module=SOFTHSM):
        self.root = root
        self.tokens = root / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "so-" + PIN],
                       check=True, capture_output=True)
        self.pin_file = root / "pin"
        self.pin_file.write_text(PIN + "\n")
        self.pin_file.chmod(0o600)
        self.module = module

    def flags(self, module=None, pin_file=None):
        return ["--pkcs11-module", module or self.module, "--pkcs11-token-label", TOKEN,
                "--pkcs11-pin-file", str(pin_file or self.pin_file), "--pkcs11-key-label", "kek"]

    def kekd_flags(self, **kw):
        return ["--backend", "pkcs11", "--pkcs11-poll-interval", "1s", *self.flags(**kw)]

    def kekctl(self, *args, check=0):
        proc = subprocess.run([str(KEKCTL), "pkcs11", *args, *self.flags()], capture_output=True, text=True, timeout=30)
        assert proc.returncode == check, proc.stderr + proc.stdout
        return proc

    def versions(self):
        return json.loads(self.kekctl("list", "--json").stdout)


@pytest.fixture
def hsm(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTHSM2_CONF", "")   # restored after the test; SoftHSM sets the real value
    h = SoftHSM(tmp_path / "hsm")
    h.kekctl("init")
    return h


@pytest.fixture
def kekd(kekd_factory, hsm):
    return kekd_factory(extra=hsm.kekd_flags(), init_key=False)


def stub_for(k, kms_pb):
    channel = grpc.insecure_channel(k.target)
    return channel, kms_pb[1].KeyManagementServiceStub(channel)


def encrypt(stub, pb, data=b"secret", uid="t"):
    return stub.Encrypt(pb.EncryptRequest(plaintext=data, uid=uid), timeout=5)


def decrypt(stub, pb, enc, timeout=5):
    return stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, key_id=enc.key_id, uid="t",
                                          annotations=dict(enc.annotations)), timeout=timeout).plaintext


def health(k, path):
    return http_get(k.health_port, path)


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_round_trip_and_the_hierarchy_on_the_token(kekd, hsm, kms_pb):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    status = stub.Status(pb.StatusRequest(), timeout=3)
    [v1] = hsm.versions()
    assert status.healthz == "ok" and status.key_id == v1["key_id"] and v1["key_id"].startswith("kekd-pkcs11-")
    enc = encrypt(stub, pb, b"\x00dek-seed" * 4)
    assert enc.key_id == v1["key_id"] and "pkcs11-local-kek.kekd.io" in enc.annotations
    assert decrypt(stub, pb, enc) == b"\x00dek-seed" * 4
    channel.close()
    status, body = health(kekd, "/readyz?verbose")
    assert status == 200 and "pkcs11" in body
    _, metrics = health(kekd, "/metrics")
    assert "kekd_pkcs11_token_up 1" in metrics
    assert kekd.stop() == 0
    ops = [json.loads(line) for line in open(kekd.audit) if '"op"' in line]
    assert any(r.get("op") == "Encrypt" and r.get("backend") == "pkcs11" for r in ops)


def test_key_objects_are_sensitive_token_keys(hsm, tmp_path):
    """Read back by an independent C reader (pkcs11_key_attributes.c) through SoftHSM itself."""
    reader = tmp_path / "attrs"
    subprocess.run(["cc", "-o", str(reader), str(pathlib.Path(__file__).with_name("pkcs11_key_attributes.c"))], check=True)
    hsm.kekctl("rotate")
    out = subprocess.run([str(reader), SOFTHSM, TOKEN, "kek"], capture_output=True, text=True, check=True,
                         env={**os.environ, "KEKD_TEST_PIN": PIN}).stdout.splitlines()
    assert sorted(out) == [f"kek-v{v} token=1 sensitive=1 extractable=0 len=32 value=CKR_ATTRIBUTE_SENSITIVE" for v in (1, 2)]


def test_rotation_followed_live_and_retire(kekd, hsm, kms_pb, tmp_path):
    pb = kms_pb[0]
    channel, stub = stub_for(kekd, kms_pb)
    old = encrypt(stub, pb, b"before")
    rotated = hsm.kekctl("rotate").stdout
    [v2, v1] = hsm.versions()
    assert v2["state"] == "primary" and v1["state"] == "active" and v2["key_id"] in rotated
    wait_for(lambda: stub.Status(pb.StatusRequest(), timeout=3).key_id == v2["key_id"], what="kekd to follow the rotation")
    new = encrypt(stub, pb, b"after")
    assert new.key_id == v2["key_id"]
    assert decrypt(stub, pb, old) == b"before" and decrypt(stub, pb, new) == b"after"

    # The same safety rules as the key-file commands.
    refused = hsm.kekctl("retire", "--key-id", v2["key_id"], check=1)
    assert "primary" in refused.stderr
    usage = tmp_path / "usage.json"
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    usage.write_text(json.dumps({"keys": {v1["key_id"]: {"last_decrypt": recent}}}))
    refused = hsm.kekctl("retire", "--key-id", v1["key_id"], "--usage-file", str(usage), check=1)
    assert "decrypted something" in refused.stderr and "--force" in refused.stderr
    assert hsm.kekctl("retire", "--key-id", v1["key_id"], "--state-dir", str(tmp_path), check=1).returncode == 1
    hsm.kekctl("retire", "--key-id", v1["key_id"], "--usage-file", str(usage), "--force")
    assert [v["state"] for v in hsm.versions()] == ["primary", "retired"]
    assert hsm.versions()[1]["label"] == "kek-v1-retired"

    def refused_now():
        try:
            decrypt(stub, pb, old)
            return False
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
            return "retired" in e.details()
    wait_for(refused_now, what="kekd to refuse the retired version (cached local KEK included)")
    assert decrypt(stub, pb, new) == b"after"
    assert hsm.kekctl("retire", "--key-id", v1["key_id"], "--force").stdout.startswith("key version 1")
    channel.close()


def start_failing(hsm, tmp_path, **flags):
    proc = subprocess.run([str(KEKD), "serve", "--listen", f"unix://{tmp_path}/k.sock", "--state-dir", str(tmp_path),
                           "--health-addr", "off", *hsm.kekd_flags(**flags)], capture_output=True, text=True, timeout=30)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines


def test_wrong_pin_fails_start_with_one_clear_line(hsm, tmp_path):
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin\n")
    wrong.chmod(0o600)
    code, lines = start_failing(hsm, tmp_path, pin_file=wrong)
    assert code == 9 and len(lines) == 1, lines
    assert "CKR_PIN_INCORRECT" in lines[0] and "not-the-pin" not in lines[0] and PIN not in lines[0]


def test_missing_module_and_missing_pin_file(hsm, tmp_path):
    code, lines = start_failing(hsm, tmp_path, module=str(tmp_path / "no-such-module.so"))
    assert code == 9 and len(lines) == 1 and "cannot load PKCS#11 module" in lines[0], lines
    code, lines = start_failing(hsm, tmp_path, pin_file=tmp_path / "no-pin")
    assert code == 9 and len(lines) == 1 and "--pkcs11-pin-file" in lines[0], lines
    hsm.pin_file.chmod(0o640)
    code, lines = start_failing(hsm, tmp_path)
    assert code == 9 and len(lines) == 1 and "accessible by group or others" in lines[0] and PIN not in lines[0], lines
    hsm.pin_file.chmod(0o600)
    proc = subprocess.run([str(KEKD), "serve", "--backend", "pkcs11", "--pkcs11-module", SOFTHSM, "--health-addr", "off",
                           "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--pkcs11-token-label or --pkcs11-slot is required" in proc.stderr


def test_token_removed_mid_run(kekd_factory, hsm, kms_pb):
    pb = kms_pb[0]
    first = kekd_factory(extra=hsm.kekd_flags(), init_key=False)
    channel, stub = stub_for(first, kms_pb)
    uncached = encrypt(stub, pb, b"from another process")
    channel.close()
    assert first.stop() == 0

    k = kekd_factory(extra=hsm.kekd_flags(), init_key=False)
    channel, stub = stub_for(k, kms_pb)
    cached = encrypt(stub, pb, b"cached")
    assert decrypt(stub, pb, cached) == b"cached"

    # The token goes away: its folder emptied.
    away = hsm.root / "away"
    shutil.move(str(hsm.tokens), str(away))
    hsm.tokens.mkdir()
    wait_for(lambda: health(k, "/readyz")[0] != 200, what="/readyz to fail")
    status, body = health(k, "/readyz?verbose")
    assert status == 503 and "[-]pkcs11" in body, body
    _, metrics = health(k, "/metrics")
    assert "kekd_pkcs11_token_up 0" in metrics and "kekd_pkcs11_token_error_info{" in metrics

    assert decrypt(stub, pb, cached) == b"cached"                    # cached local KEK keeps working
    assert decrypt(stub, pb, encrypt(stub, pb, b"new")) == b"new"    # and Encrypt never needed the token
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        decrypt(stub, pb, uncached)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "PKCS#11" in err.value.details()
    assert time.monotonic() - started < 1.0, "an uncached Decrypt must fail fast while the token is away"

    # Back, with no restart.
    shutil.rmtree(hsm.tokens)
    shutil.move(str(away), str(hsm.tokens))
    wait_for(lambda: health(k, "/readyz")[0] == 200, what="/readyz to recover")
    assert decrypt(stub, pb, uncached) == b"from another process"
    assert "kekd_pkcs11_token_up 1" in health(k, "/metrics")[1]
    channel.close()
    assert "usable again" in k.stderr_text()


@pytest.fixture
def counting_module(tmp_path, monkeypatch):
    shim = tmp_path / "counting-pkcs11.so"
    source = pathlib.Path(__file__).with_name("pkcs11_counting_shim.c")
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(shim), str(source)], check=True)
    count_file = tmp_path / "hsm-ops.txt"
    monkeypatch.setenv("KEKD_SHIM_TARGET", SOFTHSM)
    monkeypatch.setenv("KEKD_SHIM_COUNT_FILE", str(count_file))

    def count():
        return len(count_file.read_text().splitlines()) if count_file.exists() else 0
    return str(shim), count


def test_encrypt_and_cached_decrypt_never_touch_the_hsm(kekd_factory, hsm, kms_pb, counting_module):
    pb = kms_pb[0]
    shim, hsm_ops = counting_module
    k = kekd_factory(extra=hsm.kekd_flags(module=shim), init_key=False)
    channel, stub = stub_for(k, kms_pb)
    assert hsm_ops() == 2, "start wraps one local KEK: C_EncryptInit + C_Encrypt"
    before = hsm_ops()
    envelopes = [encrypt(stub, pb, i.to_bytes(4, "big")) for i in range(1000)]
    assert hsm_ops() == before, "1,000 Encrypts made HSM operations"
    for i in range(2000):
        assert decrypt(stub, pb, envelopes[i % 1000]) == (i % 1000).to_bytes(4, "big")
    assert hsm_ops() == before, "2,000 cached Decrypts made HSM operations"
    channel.close()
    assert k.stop() == 0

    # The control: a fresh kekd has nothing cached; 32 concurrent Decrypts of one local KEK cost one unwrap.
    k = kekd_factory(extra=hsm.kekd_flags(module=shim), init_key=False)
    channel, stub = stub_for(k, kms_pb)
    started = hsm_ops()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda e: decrypt(stub, pb, e), envelopes[:32]))
    assert results == [i.to_bytes(4, "big") for i in range(32)]
    assert hsm_ops() == started + 2, "one C_DecryptInit + C_Decrypt for the one uncached local KEK"
    channel.close()


def test_a_decrypt_waiting_for_a_stalled_token_leaves_at_its_deadline_or_cancellation(kekd_factory, hsm, kms_pb,
                                                                                      counting_module, monkeypatch):
    """Decrypts missing one local KEK share one token unwrap. The token stalls (the shim makes C_Decrypt take 2 s): a
    waiting Decrypt whose client gives up (its deadline, or cancelled: RST_STREAM) ends at once, as its audit record
    shows, while the unwrap goes on for the client that stayed. One unwrap in all."""
    pb = kms_pb[0]
    shim, hsm_ops = counting_module
    writer = kekd_factory(extra=hsm.kekd_flags(), init_key=False)
    channel, stub = stub_for(writer, kms_pb)
    enc = encrypt(stub, pb, b"stalled")
    channel.close()
    assert writer.stop() == 0
    monkeypatch.setenv("KEKD_SHIM_DECRYPT_DELAY_MS", "2000")
    k = kekd_factory(extra=hsm.kekd_flags(module=shim), init_key=False)   # its own state folder: nothing to warm
    channel, stub = stub_for(k, kms_pb)
    before = hsm_ops()

    def request(uid):
        return pb.DecryptRequest(ciphertext=enc.ciphertext, key_id=enc.key_id, uid=uid, annotations=dict(enc.annotations))
    patient = stub.Decrypt.future(request("patient"), timeout=20)
    time.sleep(0.3)   # the patient call is in the token's C_Decrypt now
    with pytest.raises(grpc.RpcError) as err:
        stub.Decrypt(request("hasty"), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    leaving = stub.Decrypt.future(request("leaving"), timeout=20)
    time.sleep(0.3)
    leaving.cancel()
    assert patient.result().plaintext == b"stalled"
    assert hsm_ops() - before == 2, "one C_DecryptInit + C_Decrypt for the three Decrypts"
    channel.close()
    assert k.stop() == 0
    calls = {r["uid"]: r for r in map(json.loads, open(k.audit)) if r.get("op") == "Decrypt"}
    assert calls["patient"]["outcome"] == "OK" and calls["patient"]["latency_us"] > 1_500_000
    # The server's deadline and the client's RST_STREAM come at the same moment: either ends the wait.
    assert calls["hasty"]["outcome"] in ("DEADLINE_EXCEEDED", "CANCELLED") and calls["hasty"]["latency_us"] < 1_000_000, calls
    assert calls["leaving"]["outcome"] == "CANCELLED" and calls["leaving"]["latency_us"] < 1_000_000, calls


def test_pin_file_followed_and_a_wrong_pin_never_retried(kekd_factory, hsm, kms_pb):
    """A changed PIN file is re-read; a PIN the token refused is not tried again until the file changes (retrying
    it every second would lock a real HSM's PIN)."""
    pb = kms_pb[0]
    k = kekd_factory(extra=hsm.kekd_flags(), init_key=False)
    channel, stub = stub_for(k, kms_pb)
    enc = encrypt(stub, pb, b"kept")
    hsm.pin_file.write_text("wrong-pin\n")

    def pin_refused():
        return 'kekd_pkcs11_token_error_info{error="CKR_PIN_INCORRECT"} 1' in health(k, "/metrics")[1]
    wait_for(pin_refused, what="the wrong PIN to be reported")
    assert health(k, "/readyz")[0] == 503
    _, metrics = health(k, "/metrics")
    time.sleep(3)   # three poll intervals
    logins = lambda m: sum(int(float(line.rsplit(" ", 1)[1])) for line in m.splitlines()
                           if line.startswith('kekd_backend_requests_total{op="connect"'))
    assert logins(health(k, "/metrics")[1]) == logins(metrics), "the refused PIN was tried again"
    assert decrypt(stub, pb, enc) == b"kept" and encrypt(stub, pb).key_id == enc.key_id
    hsm.pin_file.write_text(PIN + "\n")
    wait_for(lambda: health(k, "/readyz")[0] == 200, what="recovery after the PIN file was fixed")
    assert "wrong-pin" not in k.stderr_text() and PIN not in k.stderr_text()
    channel.close()


def test_a_version_made_elsewhere_is_found_at_once(kekd_factory, hsm, kms_pb):
    """Another node's kekd encrypts under a version this kekd has not rescanned yet (poll interval 1h): its Decrypt
    looks at the token at once instead of failing until the next poll."""
    pb = kms_pb[0]
    slow = kekd_factory(extra=[*hsm.kekd_flags(), "--pkcs11-poll-interval", "1h"], init_key=False)
    hsm.kekctl("rotate")
    other = kekd_factory(extra=hsm.kekd_flags(), init_key=False)
    c1, other_stub = stub_for(other, kms_pb)
    enc = encrypt(other_stub, pb, b"from the other node")
    c2, slow_stub = stub_for(slow, kms_pb)
    assert enc.key_id != slow_stub.Status(pb.StatusRequest(), timeout=3).key_id
    assert decrypt(slow_stub, pb, enc) == b"from the other node"
    c1.close()
    c2.close()


def test_pkcs11_to_file_migration_with_the_token_decrypt_only(kekd_factory, hsm, kms_pb, counting_module):
    """Section 2 with the PKCS#11 kind: data written under the HSM still decrypts after kekd is restarted with the file
    backend encrypting and the token decrypt-only (`--decrypt-also pkcs11` plus its flags under `decrypt-also-`),
    through the token (one unwrap, counted by the shim); new data carries the file key_id."""
    pb = kms_pb[0]
    hsm_node = kekd_factory(extra=hsm.kekd_flags(), init_key=False)
    channel, stub = stub_for(hsm_node, kms_pb)
    old = [encrypt(stub, pb, data=bytes([i]) * 32) for i in range(10)]
    assert all(e.key_id.startswith("kekd-pkcs11-") for e in old)
    channel.close()
    hsm_node.stop()

    only = ["--decrypt-also", "pkcs11", "--decrypt-also-pkcs11-poll-interval", "1s",
            *[("--decrypt-also-" + f[2:]) if f.startswith("--") else f for f in hsm.flags(module=counting_module[0])]]
    node = kekd_factory(extra=only)
    channel, stub = stub_for(node, kms_pb)
    status = stub.Status(pb.StatusRequest(), timeout=3)
    assert status.key_id.startswith("kekd-v") and not status.key_id.startswith("kekd-pkcs11-")
    hsm_ops = counting_module[1]
    before = hsm_ops()
    assert [decrypt(stub, pb, e) for e in old] == [bytes([i]) * 32 for i in range(10)]
    assert hsm_ops() - before == 2, "one C_DecryptInit + C_Decrypt for the one local KEK, then its cache"
    new = encrypt(stub, pb, data=b"n" * 32)
    assert new.key_id == status.key_id
    assert decrypt(stub, pb, new) == b"n" * 32
    code, ready = health(node, "/readyz?verbose")
    assert code == 200 and "key-backend-decrypt-only-pkcs11" in ready and "[+]pkcs11 ok" in ready, ready
    channel.close()


def test_a_restart_warms_the_recorded_local_keks_before_the_apiserver_asks(kekd_factory, hsm, kms_pb, counting_module):
    """Issue 13 section 3 for the token: kekd records the wrapped local KEKs it issued (STATE_DIR/pkcs11-keks.json,
    wrapped form only) and unwraps the recent ones at start, so the Decrypts after a restart cost no token calls.
    PKCS#11 has no batch: the warm-up is one C_Decrypt per recorded local KEK, made before the first Decrypt asks."""
    pb = kms_pb[0]
    shim, hsm_ops = counting_module
    envelopes = []
    for run in range(3):  # every start wraps a new local KEK: three local KEKs
        k = kekd_factory(extra=hsm.kekd_flags(module=shim), subdir="node", init_key=False)
        channel, stub = stub_for(k, kms_pb)
        envelopes.append(encrypt(stub, pb, data=bytes([run]) * 32))
        channel.close()
        assert k.stop() == 0
    record = k.dir / "pkcs11-keks.json"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    text = record.read_text()
    assert text.count('"wrapped"') == 3
    for e in envelopes:  # the record holds the annotation's wrapped form, never a key
        assert e.annotations["pkcs11-local-kek.kekd.io"].decode() in text

    def restart_and_decrypt():
        k = kekd_factory(extra=hsm.kekd_flags(module=shim), subdir="node", init_key=False)
        wait_for(lambda: "recorded local KEKs" in k.stderr_text(), what="the warm-up")
        channel, stub = stub_for(k, kms_pb)
        before = hsm_ops()
        assert [decrypt(stub, pb, e) for e in envelopes] == [bytes([i]) * 32 for i in range(3)]
        used = hsm_ops() - before
        channel.close()
        assert k.stop() == 0
        return used, k.stderr_text()

    used, log = restart_and_decrypt()
    assert used == 0, "recorded local KEKs were unwrapped again at Decrypt time"
    assert "warmed 4 of 4 recorded local KEKs" in log, log  # three old ones and the one this start wrapped

    # No record (deleted), or a corrupt one: a cold start, one token unwrap per local KEK at Decrypt time.
    record.unlink()
    k = kekd_factory(extra=hsm.kekd_flags(module=shim), subdir="node", init_key=False)
    channel, stub = stub_for(k, kms_pb)
    before = hsm_ops()
    assert [decrypt(stub, pb, e) for e in envelopes] == [bytes([i]) * 32 for i in range(3)]
    assert hsm_ops() - before == 6, "C_DecryptInit + C_Decrypt per uncached local KEK"
    channel.close()
    assert k.stop() == 0
    record.write_text("{not json")
    record.chmod(0o600)
    k = kekd_factory(extra=hsm.kekd_flags(module=shim), subdir="node", init_key=False)
    channel, stub = stub_for(k, kms_pb)
    assert [decrypt(stub, pb, e) for e in envelopes] == [bytes([i]) * 32 for i in range(3)]
    channel.close()
    assert k.stop() == 0
    assert k.stderr_text().count("record") >= 1
