"""`kekctl doctor` against a kubeadm-style /etc/kubernetes tree written under a temporary --root, with a real kekd
serving the socket in that tree: all checks pass, then each broken setup fails exactly the check that names it."""
import json
import os
import pathlib
import subprocess
import time

import pytest

from conftest import KEKCTL, KEKD, free_port, wait_for_socket

SOCKET = "/var/run/kmsplugin/socket.sock"
KEY_FILE = "/etc/kekd/kek.json"
STATE_DIR = "/var/lib/kekd"
MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
ENC_CONFIG = "/etc/kubernetes/enc/enc.yaml"

APISERVER_MANIFEST = """\
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: null
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.10
    - --authorization-mode=Node,RBAC
    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml
    - --etcd-servers=https://127.0.0.1:2379
    image: registry.k8s.io/kube-apiserver:v1.30.2
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
    - mountPath: /etc/kubernetes/enc
      name: enc
      readOnly: true
    - mountPath: /var/run/kmsplugin
      name: kms
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
  - hostPath:
      path: /etc/kubernetes/enc
      type: DirectoryOrCreate
    name: enc
  - hostPath:
      path: /var/run/kmsplugin
      type: DirectoryOrCreate
    name: kms
status: {}
"""

ENCRYPTION_CONFIG = """\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - kms:
          apiVersion: v2
          name: kekd
          endpoint: unix:///var/run/kmsplugin/socket.sock
          timeout: 3s
      - identity: {}
"""


class Node:
    """A control-plane node's files under `root`, and a kekd serving from them."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        for folder in ("var/run/kmsplugin", "etc/kekd", "var/lib/kekd", "etc/kubernetes/manifests", "etc/kubernetes/enc"):
            (root / folder).mkdir(parents=True, mode=0o700)
        self.write(MANIFEST, APISERVER_MANIFEST)
        self.write(ENC_CONFIG, ENCRYPTION_CONFIG)
        subprocess.run([str(KEKCTL), "init", "--key-file", self.host(KEY_FILE)], check=True, capture_output=True)
        self.health_port = free_port()
        self.log = open(root / "kekd.stderr", "wb")
        self.proc = subprocess.Popen(
            [str(KEKD), "serve", "--listen", "unix://" + self.host(SOCKET), "--key-file", self.host(KEY_FILE),
             "--state-dir", self.host(STATE_DIR), "--health-addr", f"127.0.0.1:{self.health_port}"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for_socket(self.host(SOCKET), self.proc)

    def host(self, path: str) -> str:
        return str(self.root) + path

    def write(self, path: str, text: str):
        pathlib.Path(self.host(path)).write_text(text)

    def edit(self, path: str, old: str, new: str):
        text = pathlib.Path(self.host(path)).read_text()
        assert old in text, f"{old!r} not in {path}"
        self.write(path, text.replace(old, new))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.log.close()

    def doctor(self, *extra):
        args = [str(KEKCTL), "doctor", "--root", str(self.root), "--socket", SOCKET, "--key-file", KEY_FILE,
                "--state-dir", STATE_DIR, "--health-addr", f"127.0.0.1:{self.health_port}", "--kekd-uid", str(os.getuid()),
                *extra]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    def doctor_json(self, *extra):
        out = self.doctor("--json", *extra)
        report = json.loads(out.stdout)
        failing = {c["name"] for c in report["checks"] if c["status"] == "fail"}
        return out.returncode, report, failing

    def audit_lines(self):
        return pathlib.Path(self.host(STATE_DIR + "/audit.log")).read_bytes().splitlines(keepends=True)


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "root")
    # A few audited calls so the chain check has records to verify.
    for _ in range(3):
        subprocess.run([str(KEKCTL), "status", "--socket", n.host(SOCKET)], check=True, capture_output=True)
    yield n
    n.stop()


EXPECTED_CHECKS = {"socket", "status", "readyz", "version", "key-file", "audit-log", "state-dir", "apiserver-manifest",
                   "apiserver-mounts", "encryption-config", "kms-endpoint", "kms-provider", "kms-cachesize", "kms-timeout",
                   "identity-order", "clock", "disk"}


def test_healthy_node_passes_every_check(node):
    code, report, failing = node.doctor_json()
    assert code == 0, report
    assert report["ok"] is True and failing == set()
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert EXPECTED_CHECKS <= set(statuses)
    # The clock and free disk depend on the machine running the test; everything kekd/apiserver is ok.
    assert {name for name, status in statuses.items() if status != "ok"} <= {"clock", "disk"}, report
    audit = next(c for c in report["checks"] if c["name"] == "audit-log")
    assert "record(s) verify" in audit["detail"] and "the last 0 " not in audit["detail"]
    text = node.doctor()
    assert text.returncode == 0
    assert any(line.startswith("ok   socket") for line in text.stdout.splitlines()), text.stdout
    assert "fail" not in {line.split()[0] for line in text.stdout.splitlines()[:-1]}


def drop_line(node, path, line):
    node.edit(path, line + "\n", "")


BROKEN = {
    "manifest without the flag": (lambda n: drop_line(n, MANIFEST, "    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml"),
                                  {"apiserver-manifest"}),
    "config folder not mounted": (lambda n: n.edit(MANIFEST, "    - mountPath: /etc/kubernetes/enc\n      name: enc\n      readOnly: true\n", ""),
                                  {"apiserver-mounts"}),
    "socket folder not mounted": (lambda n: n.edit(MANIFEST, "    - mountPath: /var/run/kmsplugin\n      name: kms\n", ""),
                                  {"apiserver-mounts"}),
    "kms v1": (lambda n: n.edit(ENC_CONFIG, "apiVersion: v2", "apiVersion: v1"), {"kms-provider"}),
    "kms without apiVersion (v1)": (lambda n: drop_line(n, ENC_CONFIG, "          apiVersion: v2"), {"kms-provider"}),
    "cachesize set": (lambda n: n.edit(ENC_CONFIG, "          timeout: 3s\n", "          timeout: 3s\n          cachesize: 1000\n"),
                      {"kms-cachesize"}),
    "timeout not a duration": (lambda n: n.edit(ENC_CONFIG, "timeout: 3s", "timeout: three"), {"kms-timeout"}),
    "identity first": (lambda n: n.edit(ENC_CONFIG, "      - kms:", "      - identity: {}\n      - kms:"), {"identity-order"}),
    "wrong endpoint": (lambda n: n.edit(ENC_CONFIG, "unix:///var/run/kmsplugin/socket.sock", "unix:///var/run/kmsplugin/other.sock"),
                       {"kms-endpoint"}),
    "config outside the subset": (lambda n: n.edit(ENC_CONFIG, "name: kekd", "name: &n kekd"), {"encryption-config"}),
    "config missing": (lambda n: os.remove(n.host(ENC_CONFIG)), {"encryption-config"}),
    "manifest missing": (lambda n: os.remove(n.host(MANIFEST)), {"apiserver-manifest"}),
    "key file mode 0644": (lambda n: os.chmod(n.host(KEY_FILE), 0o644), {"key-file"}),
    # Without a loadable key file the audit chain key is unknown: that check warns instead of passing.
    "key file corrupt": (lambda n: n.write(KEY_FILE, "{\"not\": \"a key file\"}"), {"key-file"}),
    "state folder writable by others": (lambda n: os.chmod(n.host(STATE_DIR), 0o777), {"state-dir"}),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_setup_fails_its_check(node, case):
    breaks, expected = BROKEN[case]
    breaks(node)
    code, report, failing = node.doctor_json()
    assert code == 1, report
    assert report["ok"] is False
    assert failing == expected, report
    for check in report["checks"]:
        if check["status"] == "fail":
            assert check.get("fix"), check
    text = node.doctor()
    assert text.returncode == 1
    assert any(line.startswith("fail ") and line.split()[1] in expected for line in text.stdout.splitlines())
    assert "fix: " in text.stdout


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_key_file_with_another_owner_fails(node):
    os.chown(node.host(KEY_FILE), 4242, 4242)
    code, report, failing = node.doctor_json()
    assert code == 1 and failing == {"key-file"}, report
    assert "chown" in next(c for c in report["checks"] if c["name"] == "key-file")["fix"]


def test_tampered_audit_log_fails(node):
    lines = node.audit_lines()
    assert len(lines) >= 3
    lines[-2] = lines[-2].replace(b'"op":"Status"', b'"op":"Encrypt"')
    pathlib.Path(node.host(STATE_DIR + "/audit.log")).write_bytes(b"".join(lines))
    code, report, failing = node.doctor_json()
    assert code == 1 and failing == {"audit-log"}, report
    detail = next(c for c in report["checks"] if c["name"] == "audit-log")["detail"]
    assert "audit chain broken" in detail and f"audit.log:{len(lines) - 1}:" in detail, detail


def test_audit_window_on_a_longer_log(node):
    """Only the tail is read, yet a problem is named by its line number in the whole file."""
    subprocess.run([str(KEKCTL), "bench", "--socket", node.host(SOCKET), "--op", "Status", "--calls", "400",
                    "--warmup", "0"], check=True, capture_output=True)
    path = pathlib.Path(node.host(STATE_DIR + "/audit.log"))
    for _ in range(100):
        lines = node.audit_lines()
        if len(lines) >= 400:
            break
        time.sleep(0.05)
    assert len(lines) >= 400
    target = len(lines) - 150          # 1-based line number of the altered record
    lines[target - 1] = lines[target - 1].replace(b'"op":"Status"', b'"op":"Encrypt"')
    path.write_bytes(b"".join(lines))
    code, report, failing = node.doctor_json("--audit-records", "100")
    assert code == 0, report
    code, report, failing = node.doctor_json("--audit-records", "300")
    assert code == 1 and failing == {"audit-log"}, report
    detail = next(c for c in report["checks"] if c["name"] == "audit-log")["detail"]
    assert f"audit.log:{target}:" in detail, detail


def test_audit_check_reads_only_the_last_records(node):
    """A record altered before the window is not read: --audit-records bounds the work on a long log."""
    lines = node.audit_lines()
    lines[0] = lines[0].replace(b'"op":"Status"', b'"op":"Encrypt"')
    pathlib.Path(node.host(STATE_DIR + "/audit.log")).write_bytes(b"".join(lines))
    code, report, failing = node.doctor_json("--audit-records", "1")
    assert code == 0, report
    code, report, failing = node.doctor_json("--audit-records", "1000")
    assert code == 1 and failing == {"audit-log"}, report


def test_socket_mode_differs_from_the_configured_one(node):
    code, report, failing = node.doctor_json("--socket-mode", "0660")
    assert code == 1 and failing == {"socket"}, report


def test_kekd_not_running(node):
    node.stop()
    code, report, failing = node.doctor_json()
    assert code == 1
    assert {"socket", "status", "readyz"} <= failing, report


def test_usage_errors_exit_2(node):
    assert node.doctor("--no-such-flag").returncode == 2
    assert node.doctor("--socket-mode", "rw").returncode == 2


def test_versions():
    kekctl = subprocess.run([str(KEKCTL), "--version"], capture_output=True, text=True, check=True).stdout.split()
    kekd = subprocess.run([str(KEKD), "--version"], capture_output=True, text=True, check=True).stdout.split()
    assert kekctl[0] == "kekctl" and kekd[0] == "kekd"
    assert kekctl[1] == kekd[1] and kekctl[1].count(".") == 2


@pytest.mark.parametrize("timeout,status", [("2.5s", "ok"), ("1500ms", "ok"), ("1m30s", "warn"), ("500ms", "warn")])
def test_kms_timeout_is_read_as_a_go_duration(node, timeout, status):
    node.edit(ENC_CONFIG, "timeout: 3s", f"timeout: {timeout}")
    code, report, failing = node.doctor_json()
    assert code == 0 and failing == set(), report
    assert next(c for c in report["checks"] if c["name"] == "kms-timeout")["status"] == status
