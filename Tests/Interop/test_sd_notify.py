"""kekd under systemd's Type=notify protocol, with the test playing systemd: a unix datagram socket bound in a temp
folder (or in the abstract namespace) is handed to kekd as $NOTIFY_SOCKET. READY=1 must arrive only once the KMS socket
accepts connections, WATCHDOG=1 every WATCHDOG_USEC/2 while it serves, STOPPING=1 on SIGTERM. Also: kekd keeps
working with the kernel's memory-deny-write-execute on, as kekd.service asks for it (MemoryDenyWriteExecute=yes)."""
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from conftest import KEKCTL, KEKD, free_port


class NotifySocket:
    """What systemd listens on: every datagram kekd sends, with its arrival time."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def next(self, timeout):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except socket.timeout:
            return None

    def wait_for(self, message, timeout):
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            got = self.next(max(0.01, deadline - time.time()))
            if got is None:
                break
            seen.append(got)
            if got == message:
                return seen
        raise AssertionError(f"{message!r} never arrived; got {seen}")

    def close(self):
        self.sock.close()


def start_kekd(tmp_path, env, preexec_fn=None):
    key_file = tmp_path / "kek.json"
    if not key_file.exists():
        subprocess.run([str(KEKCTL), "init", "--key-file", str(key_file)], check=True, capture_output=True)
    sock = tmp_path / "kekd.sock"
    proc = subprocess.Popen([str(KEKD), "serve", "--listen", f"unix://{sock}", "--key-file", str(key_file),
                             "--state-dir", str(tmp_path), "--health-addr", f"127.0.0.1:{free_port()}"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "kekd.stderr", "wb"),
                            preexec_fn=preexec_fn)
    return proc, str(sock)


def connect_once(path):
    """One connect attempt, no retry: proves the socket accepts at this moment."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    finally:
        s.close()


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_ready_after_the_socket_accepts_then_stopping_on_sigterm(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    proc, kms_socket = start_kekd(tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        assert notify.next(timeout=20) == "READY=1"
        connect_once(kms_socket)   # READY=1 came after the socket accepted: no retry needed
        assert notify.next(timeout=1.5) is None, "nothing but READY=1 without a watchdog"
        proc.send_signal(signal.SIGTERM)
        assert notify.next(timeout=10) == "STOPPING=1"
        assert proc.wait(timeout=15) == 0
    finally:
        stop(proc)
        notify.close()


def test_watchdog_pings_at_half_the_interval(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    proc, _ = start_kekd(tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"})
    try:
        assert notify.next(timeout=20) == "READY=1"
        arrivals = []
        deadline = time.time() + 1.6
        while time.time() < deadline:
            got = notify.next(timeout=max(0.01, deadline - time.time()))
            if got is not None:
                assert got == "WATCHDOG=1"
                arrivals.append(time.monotonic())
        # 0.3 s apart over 1.6 s: about 5; well under systemd's 0.6 s timeout each.
        assert 3 <= len(arrivals) <= 7, arrivals
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert max(gaps) < 0.55, gaps
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.wait_for("STOPPING=1", timeout=10)
        assert proc.wait(timeout=15) == 0
    finally:
        stop(proc)
        notify.close()


def test_watchdog_for_another_pid_is_ignored(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    proc, _ = start_kekd(tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000",
                                    "WATCHDOG_PID": "1"})
    try:
        assert notify.next(timeout=20) == "READY=1"
        assert notify.next(timeout=1) is None, "WATCHDOG_PID names another process"
    finally:
        assert stop(proc) == 0
        notify.close()


def test_abstract_notify_socket(tmp_path):
    name = f"kekd-test-{os.getpid()}-{secrets.token_hex(4)}"
    notify = NotifySocket("\0" + name)
    proc, _ = start_kekd(tmp_path, {"NOTIFY_SOCKET": "@" + name})
    try:
        assert notify.next(timeout=20) == "READY=1"
    finally:
        assert stop(proc) == 0
        notify.close()


def test_without_notify_socket_nothing_is_sent_and_a_bad_one_is_refused(tmp_path):
    proc, kms_socket = start_kekd(tmp_path, {"NOTIFY_SOCKET": "relative/notify.sock"})
    assert proc.wait(timeout=20) == 2
    err = (tmp_path / "kekd.stderr").read_text().strip().splitlines()
    assert len(err) == 1 and "NOTIFY_SOCKET" in err[0], err
    assert not os.path.exists(kms_socket), "refused before the socket was created"


def set_memory_deny_write_execute():
    """prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel's version of systemd's MemoryDenyWriteExecute=
    (no writable+executable mapping, no mapping made executable later), inherited across execve."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def test_kekd_serves_with_memory_deny_write_execute(tmp_path, kms_pb):
    # The setting survives execve and is enforced: a child asking for a writable+executable mapping is refused.
    wx_map = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    assert subprocess.run([sys.executable, "-c", wx_map], capture_output=True).returncode == 0
    try:
        probe = subprocess.run([sys.executable, "-c", wx_map], preexec_fn=set_memory_deny_write_execute, capture_output=True)
    except subprocess.SubprocessError:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr, probe.stderr
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    proc, kms_socket = start_kekd(tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
                                  preexec_fn=set_memory_deny_write_execute)
    try:
        assert notify.next(timeout=20) == "READY=1"
        pb, grpc_pb = kms_pb
        with grpc.insecure_channel(f"unix://{kms_socket}") as channel:
            stub = grpc_pb.KeyManagementServiceStub(channel)
            assert stub.Status(pb.StatusRequest(), timeout=5).healthz == "ok"
            seed = secrets.token_bytes(32)
            enc = stub.Encrypt(pb.EncryptRequest(plaintext=seed, uid="u"), timeout=5)
            assert stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, key_id=enc.key_id, uid="u",
                                                  annotations=dict(enc.annotations)), timeout=5).plaintext == seed
        assert proc.poll() is None
    finally:
        assert stop(proc) == 0
        notify.close()
