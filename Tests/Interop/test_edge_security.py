"""Security review (issue 15) findings at kekd's edge, each reproduced against the built binary:
item 1 (health endpoint starvation, health port squatting, exec probe), item 7 (allowed uids default),
item 8 (stale socket rule), item 13 (core dumps), item 14 (socket replaced during the run), item 15 (readyz detail).

Some tests run kekd as an unprivileged uid through setpriv(1); they need root and skip otherwise."""
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import grpc
import pytest

from conftest import KEKCTL, KEKD, free_port, wait_for_socket

# kekd's dedicated uid in manifests/ (unprivileged; see manifests/README.md for why this number).
KEKD_TEST_UID = 60917


def http_get(port, path, timeout=3):
    """A one-shot HTTP/1.1 GET; (status, body, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    elapsed = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(), elapsed


def status_call(target, kms_pb, timeout=3):
    channel = grpc.insecure_channel(target)
    try:
        return kms_pb[1].KeyManagementServiceStub(channel).Status(kms_pb[0].StatusRequest(), timeout=timeout)
    finally:
        channel.close()


# ---- item 1 / issue 11 item 8: the health endpoint cannot be starved or squatted ---------------------------------

def test_livez_answers_within_100ms_with_200_stalled_connections(kekd):
    port = kekd.health_port
    stalled = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # half a request, never finished
            stalled.append(s)
        time.sleep(0.3)   # let kekd take them all in
        times = []
        for _ in range(10):
            code, body, elapsed = http_get(port, "/livez")
            assert (code, body) == (200, "ok\n")
            times.append(elapsed)
            time.sleep(0.02)
        assert max(times) < 0.1, f"/livez took {max(times) * 1000:.0f} ms with 200 stalled connections: {times}"
        _, metrics, _ = http_get(port, "/metrics")
        evicted = [l for l in metrics.splitlines() if l.startswith("kekd_health_connections_evicted_total ")]
        assert evicted and float(evicted[0].split()[1]) > 0
    finally:
        for s in stalled:
            s.close()


def test_taken_health_port_is_retried_while_the_socket_serves(kekd_factory, kms_pb, tmp_path):
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    k = kekd_factory(extra=["--health-addr", f"127.0.0.1:{port}"])   # the later flag wins
    try:
        assert status_call(k.target, kms_pb).healthz == "ok"
        assert k.proc.poll() is None
        log = k.stderr_text()
        assert "health endpoint cannot listen" in log and str(port) in log
    finally:
        squatter.close()
    deadline = time.time() + 20
    while True:
        try:
            code, body, _ = http_get(port, "/livez", timeout=1)
            if code == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline, "/livez never became reachable after the port was freed"
        time.sleep(0.2)
    _, metrics, _ = http_get(port, "/metrics")
    assert "kekd_health_listening 1" in metrics
    failures = [l for l in metrics.splitlines() if l.startswith("kekd_health_bind_failures_total ")]
    assert failures and float(failures[0].split()[1]) >= 1
    assert status_call(k.target, kms_pb).healthz == "ok"


def test_malformed_health_address_still_exits_8(tmp_path):
    subprocess.run([str(KEKCTL), "init", "--key-file", f"{tmp_path}/kek.json"], check=True, capture_output=True)
    p = subprocess.run([str(KEKD), "serve", "--listen", f"unix://{tmp_path}/s.sock", "--key-file", f"{tmp_path}/kek.json",
                        "--state-dir", str(tmp_path), "--health-addr", "example.com:8787"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 8 and len(p.stderr.strip().splitlines()) == 1


def test_kekctl_status_is_a_fast_exec_probe_and_fails_when_kekd_does_not_answer(kekd):
    started = time.monotonic()
    ok = subprocess.run([str(KEKCTL), "status", "--socket", kekd.socket], capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0 and "healthz: ok" in ok.stdout
    assert time.monotonic() - started < 1.0
    # A kekd that no longer answers (stopped, hung) fails the probe within --timeout, not the client's 5 s default.
    kekd.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        hung = subprocess.run([str(KEKCTL), "status", "--socket", kekd.socket, "--timeout", "1s"],
                              capture_output=True, text=True, timeout=10)
        assert hung.returncode != 0 and hung.stderr.strip()
        assert time.monotonic() - started < 2.5
    finally:
        kekd.proc.send_signal(signal.SIGCONT)
    gone = subprocess.run([str(KEKCTL), "status", "--socket", kekd.socket + ".missing"], capture_output=True, text=True,
                          timeout=10)
    assert gone.returncode != 0


# ---- helpers to run kekd as an unprivileged uid -----------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv(1) to run kekd as another uid")


@pytest.fixture
def open_dir():
    """A temporary folder every uid can traverse (pytest's tmp_path sits under a root-only 0700 folder)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="kekd-edge-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_uid(uid, argv):
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def prepare_unprivileged(d, uid=KEKD_TEST_UID):
    """A key file and state folder owned by `uid`."""
    subprocess.run([str(KEKCTL), "init", "--key-file", str(d / "kek.json")], check=True, capture_output=True)
    (d / "state").mkdir()
    for p in (d / "kek.json", d / "state"):
        os.chown(p, uid, uid)


def serve_args(d, sock, *extra):
    return [str(KEKD), "serve", "--listen", f"unix://{sock}", "--key-file", str(d / "kek.json"),
            "--state-dir", str(d / "state"), "--health-addr", "off", *extra]


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- item 7: kekd's own uid is not a caller unless listed ---------------------------------------------------------

@needs_root
def test_kekds_own_uid_may_call_status_only_unless_listed_and_everything_in_dev_mode(open_dir):
    prepare_unprivileged(open_dir)
    sock = open_dir / "state" / "kekd.sock"
    proc = subprocess.Popen(as_uid(KEKD_TEST_UID, serve_args(open_dir, sock)), stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(str(sock), proc)
        # The exec probe's call: Status as kekd's own uid.
        probe = subprocess.run(as_uid(KEKD_TEST_UID, [str(KEKCTL), "status", "--socket", str(sock)]),
                               capture_output=True, text=True, timeout=10)
        assert probe.returncode == 0, probe.stderr
        # Anything else sharing kekd's uid cannot use the keys.
        enc = subprocess.run(as_uid(KEKD_TEST_UID, [str(KEKCTL), "encrypt", "--socket", str(sock)]), input="secret",
                             capture_output=True, text=True, timeout=10)
        assert enc.returncode != 0 and "PERMISSION_DENIED" in enc.stderr.upper().replace(" ", "_"), enc.stderr
        # Root (kube-apiserver) may.
        root = subprocess.run([str(KEKCTL), "encrypt", "--socket", str(sock)], input="secret", capture_output=True,
                              text=True, timeout=10)
        assert root.returncode == 0, root.stderr
    finally:
        stop(proc)

    # --dev: the developer's own uid may call the kekd they started.
    dev = open_dir / "dev"
    dev.mkdir()
    os.chown(dev, KEKD_TEST_UID, KEKD_TEST_UID)
    proc = subprocess.Popen(as_uid(KEKD_TEST_UID, [str(KEKD), "serve", "--dev", "--health-addr", "off"]), cwd=dev,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(str(dev / "state" / "kekd.sock"), proc)
        own = subprocess.run(as_uid(KEKD_TEST_UID, [str(KEKCTL), "encrypt", "--socket", str(dev / "state" / "kekd.sock")]),
                             input="secret", capture_output=True, text=True, timeout=10)
        assert own.returncode == 0, own.stderr
    finally:
        stop(proc)


# ---- item 8: only ECONNREFUSED makes a socket stale -----------------------------------------------------------------

@needs_root
def test_socket_kekd_cannot_probe_is_not_deleted(open_dir):
    prepare_unprivileged(open_dir)
    # A live server's socket that kekd's uid may not connect to (root-owned, 0600, in a folder kekd may write).
    sockdir = open_dir / "run"
    sockdir.mkdir()
    os.chmod(sockdir, 0o777)
    path = sockdir / "socket.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    os.chmod(path, 0o600)
    try:
        p = subprocess.run(as_uid(KEKD_TEST_UID, serve_args(open_dir, path)), capture_output=True, text=True, timeout=20)
        assert p.returncode == 4, p.stderr
        assert "refusing to remove" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        assert stat.S_ISSOCK(os.lstat(path).st_mode), "the live socket was deleted"
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))   # still served
        probe.close()
    finally:
        live.close()


def test_live_socket_with_a_full_backlog_is_neither_deleted_nor_waited_on(tmp_path):
    subprocess.run([str(KEKCTL), "init", "--key-file", f"{tmp_path}/kek.json"], check=True, capture_output=True)
    path = tmp_path / "busy.sock"
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(str(path))
    busy.listen(0)
    queued = []
    try:
        while True:   # fill the backlog of a server that never accepts
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            try:
                c.connect(str(path))
            except BlockingIOError:
                c.close()
                break
            queued.append(c)
        p = subprocess.run([str(KEKD), "serve", "--listen", f"unix://{path}", "--key-file", f"{tmp_path}/kek.json",
                            "--state-dir", str(tmp_path), "--health-addr", "off"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 4 and "another process" in p.stderr
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        for c in queued:
            c.close()
        busy.close()


def test_refused_socket_is_still_removed_as_stale(tmp_path, kms_pb):
    subprocess.run([str(KEKCTL), "init", "--key-file", f"{tmp_path}/kek.json"], check=True, capture_output=True)
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()   # the file stays, nobody listens: connect gives ECONNREFUSED
    proc = subprocess.Popen([str(KEKD), "serve", "--listen", f"unix://{path}", "--key-file", f"{tmp_path}/kek.json",
                             "--state-dir", str(tmp_path), "--health-addr", "off"], stderr=subprocess.PIPE)
    try:
        wait_for_socket(str(path), proc)
        assert status_call(f"unix://{path}", kms_pb).healthz == "ok"
    finally:
        stop(proc)
    assert "removed stale socket file" in proc.stderr.read().decode()


# ---- item 13: no core dumps ------------------------------------------------------------------------------------------

def test_core_dumps_are_off(kekd):
    limits = pathlib.Path(f"/proc/{kekd.proc.pid}/limits").read_text()
    (line,) = [l for l in limits.splitlines() if l.startswith("Max core file size")]
    assert line.split()[4:6] == ["0", "0"], line


@needs_root
def test_kekd_is_not_dumpable(open_dir):
    # A non-dumpable process's /proc files belong to root whatever its uid; a dumpable one's to its own uid.
    prepare_unprivileged(open_dir)
    sock = open_dir / "state" / "kekd.sock"
    proc = subprocess.Popen(as_uid(KEKD_TEST_UID, serve_args(open_dir, sock)), stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(str(sock), proc)
        assert pathlib.Path(f"/proc/{proc.pid}/status").read_text().count(f"\t{KEKD_TEST_UID}\t") >= 1
        assert os.stat(f"/proc/{proc.pid}/environ").st_uid == 0
        assert os.stat(f"/proc/{proc.pid}/fd").st_uid == 0
    finally:
        stop(proc)


# ---- item 14: shutdown removes only the socket kekd created ---------------------------------------------------------

@pytest.mark.parametrize("replacement", ["socket", "file"])
def test_socket_replaced_during_the_run_survives_shutdown(kekd, replacement):
    path = kekd.socket
    os.rename(path, path + ".kekd")
    if replacement == "socket":
        other = socket.socket(socket.AF_UNIX)
        other.bind(path)
        other.listen(1)
    else:
        pathlib.Path(path).write_text("operator's file\n")
    try:
        assert kekd.stop(signal.SIGTERM) == 0
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode) if replacement == "socket" else pathlib.Path(path).read_text() == "operator's file\n"
    finally:
        if replacement == "socket":
            other.close()


def test_own_socket_is_still_removed_on_shutdown(kekd):
    assert kekd.stop(signal.SIGTERM) == 0
    assert not os.path.exists(kekd.socket)


# ---- item 15: /readyz shows names and states only ---------------------------------------------------------------------

def assert_names_and_states_only(body):
    lines = body.splitlines()
    assert lines[-1] in ("readyz check passed", "readyz check failed")
    for line in lines[:-1]:
        assert re.fullmatch(r"\[[+-]\][a-z-]+ (ok|failed|excluded: ok)", line), f"detail in /readyz: {line!r}"


def test_readyz_shows_no_paths(kekd):
    code, body, _ = http_get(kekd.health_port, "/readyz?verbose")
    assert code == 200
    assert "[+]socket ok" in body and "[+]key-backend ok" in body
    assert str(kekd.dir) not in body
    assert_names_and_states_only(body)


def kekd_whose_vault_is_gone(kekd_factory, tmp_path):
    """A kekd on the Vault backend whose Vault has stopped: it serves, its key backend stays not ready."""
    from fake_vault import FakeVaultProcess
    with FakeVaultProcess(tmp_path / "vault") as v:
        flags = v.kekd_flags("token")
        addr = v.info["addr"]
    hmac_key = tmp_path / "audit-hmac.key"
    hmac_key.write_text(os.urandom(32).hex())
    os.chmod(hmac_key, 0o600)
    k = kekd_factory(extra=["--backend", "vault", "--audit-hmac-key-file", str(hmac_key), *flags], init_key=False)
    return k, addr


def test_liveness_probe_passes_while_readiness_fails_on_a_backend_outage(kekd_factory, tmp_path):
    k, _ = kekd_whose_vault_is_gone(kekd_factory, tmp_path)
    ready = subprocess.run([str(KEKCTL), "status", "--socket", k.socket, "--timeout", "2s"], capture_output=True,
                           text=True, timeout=10)
    assert ready.returncode == 1 and "UNAVAILABLE" in ready.stderr.upper().replace(" ", "_")
    live = subprocess.run([str(KEKCTL), "status", "--socket", k.socket, "--timeout", "2s", "--liveness"],
                          capture_output=True, text=True, timeout=10)
    assert live.returncode == 0, live.stderr
    k.proc.send_signal(signal.SIGSTOP)
    try:
        hung = subprocess.run([str(KEKCTL), "status", "--socket", k.socket, "--timeout", "1s", "--liveness"],
                              capture_output=True, text=True, timeout=10)
        assert hung.returncode == 1
    finally:
        k.proc.send_signal(signal.SIGCONT)


def test_failing_readyz_names_the_check_but_not_the_vault_address(kekd_factory, tmp_path):
    k, addr = kekd_whose_vault_is_gone(kekd_factory, tmp_path)
    host_port = addr.split("//", 1)[1]
    deadline = time.time() + 10
    while True:
        code, body, _ = http_get(k.health_port, "/readyz?verbose")
        if code == 503:
            break
        assert time.time() < deadline, body
        time.sleep(0.1)
    assert "[-]key-backend failed" in body
    assert_names_and_states_only(body)
    for secret in (host_port, addr, str(tmp_path)):
        assert secret not in body
    code, single, _ = http_get(k.health_port, "/readyz/key-backend")
    assert code == 503 and host_port not in single
    assert "readiness check failed" in k.stderr_text()
