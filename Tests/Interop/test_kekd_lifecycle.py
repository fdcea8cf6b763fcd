"""kekd as an operator meets it: startup validation and exit codes, signals, health and metrics, caller
authorization, limits, and the audit modes — all against the built binary."""
import json
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.request

import grpc
import pytest

from conftest import KEKCTL, KEKD


def start_fails(args, timeout=20):
    p = subprocess.run([str(KEKD), "serve", *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr.strip()


def base_args(tmp_path, key_file=None):
    return ["--listen", f"unix://{tmp_path}/s.sock", "--key-file", key_file or f"{tmp_path}/kek.json",
            "--state-dir", str(tmp_path), "--health-addr", "off"]


def status(kekd_or_target, kms_pb, timeout=3):
    target = kekd_or_target if isinstance(kekd_or_target, str) else kekd_or_target.target
    channel = grpc.insecure_channel(target)
    try:
        return kms_pb[1].KeyManagementServiceStub(channel).Status(kms_pb[0].StatusRequest(), timeout=timeout)
    finally:
        channel.close()


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_flags_exit_2(tmp_path):
    rc, err = start_fails(["--no-such-flag"])
    assert rc == 2 and "unknown flag --no-such-flag" in err
    rc, err = start_fails(base_args(tmp_path) + ["--max-connections", "zero"])
    assert rc == 2 and "--max-connections" in err
    rc, err = start_fails(base_args(tmp_path) + ["--backend", "hsm"])
    assert rc == 2 and "--backend" in err
    assert len(err.splitlines()) == 1


def test_key_file_problems_exit_3(tmp_path):
    rc, err = start_fails(base_args(tmp_path, key_file=f"{tmp_path}/missing.json"))
    assert rc == 3 and "missing.json" in err
    key = tmp_path / "kek.json"
    subprocess.run([str(KEKCTL), "init", "--key-file", str(key)], check=True, capture_output=True)
    os.chmod(key, 0o644)
    rc, err = start_fails(base_args(tmp_path))
    assert rc == 3 and err
    os.chmod(key, 0o600)
    key.write_text(key.read_text().replace('"primary"', '"primery"'))
    rc, err = start_fails(base_args(tmp_path))
    assert rc == 3 and err


def test_socket_problems_exit_4(kekd, tmp_path):
    subprocess.run([str(KEKCTL), "init", "--key-file", f"{tmp_path}/kek2.json"], check=True, capture_output=True)
    args = base_args(tmp_path, key_file=f"{tmp_path}/kek2.json")
    args[1] = f"unix://{kekd.socket}"  # a live kekd answers there
    rc, err = start_fails(args)
    assert rc == 4 and "another process" in err
    regular = tmp_path / "not-a-socket"
    regular.write_text("x")
    args[1] = f"unix://{regular}"
    rc, err = start_fails(args)
    assert rc == 4 and "not a socket" in err
    assert regular.read_text() == "x"


def test_fips_is_enforced_or_refused(tmp_path):
    subprocess.run([str(KEKCTL), "init", "--key-file", f"{tmp_path}/kek.json"], check=True, capture_output=True)
    have_fips = "fips" in subprocess.run(["openssl", "list", "-providers", "-provider", "fips"], capture_output=True, text=True).stdout.lower()
    if have_fips:
        proc = subprocess.Popen([str(KEKD), "serve", *base_args(tmp_path), "--fips"], stderr=subprocess.PIPE)
        time.sleep(2)
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(10) == 0
    else:
        rc, err = start_fails(base_args(tmp_path) + ["--fips"])
        assert rc == 7 and "FIPS" in err
        assert not os.path.exists(f"{tmp_path}/s.sock"), "nothing may be served when --fips cannot be honoured"


def test_sigterm_drains_removes_socket_exits_0(kekd, kms_pb):
    assert status(kekd, kms_pb).healthz == "ok"
    assert stat.S_IMODE(os.stat(kekd.socket).st_mode) == 0o600
    assert kekd.stop(signal.SIGTERM) == 0
    assert not os.path.exists(kekd.socket)
    assert '"shutting down"' in kekd.stderr_text()


def test_start_line_and_json_logs(kekd):
    time.sleep(0.2)
    lines = [json.loads(l) for l in kekd.stderr_text().splitlines() if l.strip()]
    started = [l for l in lines if l["msg"] == "kekd started"]
    assert started and started[0]["backend"] == "file" and started[0]["key_id"] and started[0]["socket"] == kekd.socket
    assert "version" in started[0]


def test_health_and_metrics(kekd, kms_pb):
    port = kekd.health_port
    assert http_get(port, "/livez")[0] == 200
    code, body = http_get(port, "/readyz?verbose")
    assert code == 200
    for check in ("socket", "key-backend", "audit-log"):
        assert check in body
    assert http_get(port, "/healthz")[0] == 200
    assert http_get(port, "/nope")[0] == 404
    key_id = status(kekd, kms_pb).key_id
    channel = grpc.insecure_channel(kekd.target)
    bad = channel.unary_unary("/v2.KeyManagementService/Nope", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError):
        bad(b"", timeout=3)
    channel.close()
    code, metrics = http_get(port, "/metrics")
    assert code == 200
    assert 'kekd_grpc_requests_total{op="Status",code="OK"} 1' in metrics or 'kekd_grpc_requests_total{code="OK",op="Status"} 1' in metrics
    assert 'code="UNIMPLEMENTED"' in metrics
    assert f'kekd_key_info{{key_id="{key_id}"}} 1' in metrics
    assert "kekd_grpc_request_duration_seconds_bucket" in metrics
    assert "kekd_connections" in metrics and "kekd_process_resident_memory_bytes" in metrics
    assert "kekd_audit_records_total" in metrics


def test_disallowed_peer_is_refused_and_audited(kekd_factory, kms_pb):
    # kekd runs as root here, and its own uid may call Status by default: take that away too.
    k = kekd_factory(extra=["--allowed-uids", "54321", "--status-only-uids", "54321"])
    with pytest.raises(grpc.RpcError) as err:
        status(k, kms_pb, timeout=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    k.stop()
    records = [json.loads(l) for l in open(k.audit)]
    refused = [r for r in records if r["op"] == "connection"]
    assert refused and refused[0]["outcome"] == "PERMISSION_DENIED" and refused[0]["peer"]["uid"] == os.getuid()
    assert not [r for r in records if r["op"] == "Status"]


def test_connection_limit(kekd_factory, kms_pb):
    k = kekd_factory(extra=["--max-connections", "2"])
    time.sleep(0.3)  # let the fixture's readiness probe connection finish
    held = []
    for _ in range(2):
        s = socket.socket(socket.AF_UNIX)
        s.connect(k.socket)
        s.settimeout(3)
        assert s.recv(9)[3] == 4, "a connection within the limit gets our SETTINGS"
        held.append(s)
    extra = socket.socket(socket.AF_UNIX)
    extra.connect(k.socket)
    extra.settimeout(3)
    assert extra.recv(100) == b"", "a connection over the limit is closed at once"
    for s in held:
        s.close()
    time.sleep(0.3)
    assert status(k, kms_pb).healthz == "ok"


def test_audit_to_stdout(kekd_factory, kms_pb):
    k = kekd_factory(extra=["--audit-log", "-"])
    status(k, kms_pb)
    k.stop()
    out = (k.dir / "kekd.stdout").read_text().splitlines()
    records = [json.loads(l) for l in out if l.startswith("{")]
    assert any(r["op"] == "Status" and r["outcome"] == "OK" for r in records)


def test_fail_closed_refuses_calls_it_cannot_record(kekd_factory, kms_pb):
    k = kekd_factory(extra=["--audit-log", "/dev/full", "--audit-mode", "fail-closed"])
    with pytest.raises(grpc.RpcError) as err:
        channel = grpc.insecure_channel(k.target)
        kms_pb[1].KeyManagementServiceStub(channel).Encrypt(kms_pb[0].EncryptRequest(plaintext=b"s" * 32, uid="x"), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "audit" in err.value.details()


def test_fail_closed_records_before_answering(kekd_factory, kms_pb):
    k = kekd_factory(extra=["--audit-mode", "fail-closed"])
    for _ in range(5):
        assert status(k, kms_pb).healthz == "ok"
        # Each answered call is already durable in the file when the answer arrives.
    lines = open(k.audit).read().splitlines()
    assert sum(1 for l in lines if '"op":"Status"' in l) == 5


def test_sighup_and_live_rotation(kekd, kms_pb):
    pb = kms_pb[0]
    before = status(kekd, kms_pb).key_id
    channel = grpc.insecure_channel(kekd.target)
    stub = kms_pb[1].KeyManagementServiceStub(channel)
    old = stub.Encrypt(pb.EncryptRequest(plaintext=b"k" * 32, uid="r"), timeout=3)
    out = subprocess.run([str(KEKCTL), "rotate", "--key-file", kekd.key_file], check=True, capture_output=True, text=True).stdout
    assert before in out
    kekd.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while status(kekd, kms_pb).key_id == before and time.time() < deadline:
        time.sleep(0.1)
    after = status(kekd, kms_pb).key_id
    assert after != before
    new = stub.Encrypt(pb.EncryptRequest(plaintext=b"n" * 32, uid="r"), timeout=3)
    assert new.key_id == after
    dec = stub.Decrypt(pb.DecryptRequest(ciphertext=old.ciphertext, uid="r", key_id=old.key_id, annotations=dict(old.annotations)), timeout=3)
    assert dec.plaintext == b"k" * 32
    channel.close()


def test_rotation_without_sighup_reaches_status_and_metrics(kekd, kms_pb):
    before = status(kekd, kms_pb).key_id
    subprocess.run([str(KEKCTL), "rotate", "--key-file", kekd.key_file], check=True, capture_output=True)
    deadline = time.time() + 5
    after = before
    while after == before and time.time() < deadline:
        time.sleep(0.1)
        after = status(kekd, kms_pb).key_id
    assert after != before, "kekd follows the key file without a signal"
    deadline = time.time() + 5
    metrics = ""
    while f'kekd_key_info{{key_id="{after}"}} 1' not in metrics and time.time() < deadline:
        time.sleep(0.2)
        metrics = http_get(kekd.health_port, "/metrics")[1]
    assert f'kekd_key_info{{key_id="{after}"}} 1' in metrics
    assert before not in metrics


def metric_samples(port):
    """/metrics parsed by prometheus_client's own parser: {(name, frozenset(labels)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    code, text = http_get(port, "/metrics")
    assert code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_until(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files to another uid")


@needs_root
def test_key_file_owned_by_another_uid_exits_3(tmp_path):
    key = tmp_path / "kek.json"
    subprocess.run([str(KEKCTL), "init", "--key-file", str(key)], check=True, capture_output=True)
    os.chown(key, 65534, 65534)   # mode stays 0600: only the owner is wrong
    rc, err = start_fails(base_args(tmp_path))
    assert rc == 3 and "owned by uid 65534" in err and len(err.splitlines()) == 1


def test_rejected_key_file_reload_fails_readyz_until_a_good_file_loads(kekd, kms_pb):
    """A broken key file never takes effect (kekd keeps its keys and Status stays ok), but it is no longer silent:
    /readyz fails check `key-file` and kekd_key_file_valid is 0 until a good file is loaded."""
    port = kekd.health_port
    good = open(kekd.key_file, "rb").read()
    samples = metric_samples(port)
    assert samples[("kekd_key_file_valid", frozenset())] == 1
    assert samples[("kekd_key_file_reload_failures_total", frozenset())] == 0
    assert "key-file" in http_get(port, "/readyz?verbose")[1]

    with open(kekd.key_file, "wb") as f:   # in place, keeping mode 0600: only the content is broken
        f.write(good.replace(b'"primary"', b'"primery"'))
    assert wait_until(lambda: http_get(port, "/readyz")[0] == 503)
    code, body = http_get(port, "/readyz?verbose")
    assert code == 503 and "[-]key-file" in body and "[+]key-backend" in body
    samples = metric_samples(port)
    assert samples[("kekd_key_file_valid", frozenset())] == 0
    assert samples[("kekd_key_file_reload_failures_total", frozenset())] >= 1
    assert status(kekd, kms_pb).healthz == "ok"   # the previous keys still serve

    with open(kekd.key_file, "wb") as f:
        f.write(good)
    assert wait_until(lambda: http_get(port, "/readyz")[0] == 200)
    assert metric_samples(port)[("kekd_key_file_valid", frozenset())] == 1

    if os.geteuid() == 0:   # a reload is held to the same owner rule as the start
        os.chown(kekd.key_file, 65534, 65534)
        assert wait_until(lambda: http_get(port, "/readyz")[0] == 503)
        assert "owned by uid 65534" in kekd.stderr_text()
        os.chown(kekd.key_file, 0, 0)
        assert wait_until(lambda: http_get(port, "/readyz")[0] == 200)
