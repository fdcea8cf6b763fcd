"""`kekctl rotate-cluster` end to end: a three-node control plane on one machine (three stand-in apiservers from
fake_apiserver.py, each with its own real kekd and key file copy), a real etcd holding the Secrets in the real KMS v2
storage format, and kekctl driving the rotation through the Kubernetes API exactly as on a cluster."""
import base64
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import KEKCTL, ROOT, Kekd
from fake_apiserver import Cluster, Etcd, FakeAPIServer, stored_key_ids
from fake_vault import make_certs

SECRETS = 2000


@pytest.fixture(scope="module")
def storage_pb():
    """EncryptedObject from Proto/storage/kmsv2/v2/api.proto, compiled by grpcio-tools (independent of our codec)."""
    out = tempfile.mkdtemp(prefix="kekd-storage-pb-")
    from grpc_tools import protoc
    import grpc_tools
    include = str(pathlib.Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT / 'Proto'}", f"-I{include}", f"--python_out={out}",
                      str(ROOT / "Proto/storage/kmsv2/v2/api.proto")])
    assert rc == 0
    sys.path.insert(0, out)
    from storage.kmsv2.v2 import api_pb2  # noqa: E402
    return api_pb2


class ControlPlane:
    def __init__(self, tmp: pathlib.Path, kms_pb, storage_pb, nodes=3, vault=None):
        self.tmp = tmp
        self.vault = vault
        self.storage_pb = storage_pb
        self.etcd = Etcd(tmp / "etcd")
        self.certs = make_certs(str(tmp))
        self.cluster = Cluster(self.etcd, storage_pb, kms_pb)
        self.kekds, self.apiservers = [], []
        first_key = None
        for i in range(nodes):
            d = tmp / f"node{i}"
            d.mkdir()
            if vault is not None:
                hmac_key = d / "audit-hmac.key"
                hmac_key.write_text(os.urandom(32).hex())
                os.chmod(hmac_key, 0o600)
                self.kekds.append(Kekd(d, ["--backend", "vault", "--audit-hmac-key-file", str(hmac_key), *vault.kekd_flags(),
                                           "--vault-key-poll-interval", "300ms"], init_key=False))
                continue
            if first_key is None:
                subprocess.run([str(KEKCTL), "init", "--key-file", str(d / "kek.json")], check=True, capture_output=True)
                first_key = d / "kek.json"
            else:
                shutil.copy2(first_key, d / "kek.json")
            self.kekds.append(Kekd(d, init_key=False))
        for k in self.kekds:
            self.apiservers.append(FakeAPIServer(self.cluster, k.socket, self.certs, status_interval=0.3))
        self.kubeconfig = tmp / "kubeconfig"
        ca = base64.b64encode(open(self.certs["ca.pem"], "rb").read()).decode()
        self.kubeconfig.write_text(f"""\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {self.apiservers[0].url}
  name: test
contexts:
- context:
    cluster: test
    user: kubernetes-admin
  name: kubernetes-admin@test
current-context: kubernetes-admin@test
users:
- name: kubernetes-admin
  user:
    token: {self.cluster.token}
""")
        self.state_file = tmp / "rotation.json"
        self.sync_script = tmp / "sync.sh"
        self.set_sync_targets(range(1, nodes))

    def set_sync_targets(self, nodes):
        """The operator's sync command: copy the key file to these nodes (atomically: temp file, then rename)."""
        lines = ["#!/bin/sh", "set -e"]
        for i in nodes:
            dest = self.tmp / f"node{i}" / "kek.json"
            lines.append(f'cp -p "$1" "{dest}.sync" && mv "{dest}.sync" "{dest}"')
        self.sync_script.write_text("\n".join(lines) + "\n")

    def key_id(self, node=0):
        out = subprocess.run([str(KEKCTL), "status", "--socket", self.kekds[node].socket, "--json"], capture_output=True, text=True)
        return json.loads(out.stdout)["key_id"]

    def versions(self, node):
        out = subprocess.run([str(KEKCTL), "list", "--key-file", str(self.tmp / f"node{node}" / "kek.json"), "--json"],
                             check=True, capture_output=True, text=True)
        return {v["key_id"]: v["state"] for v in json.loads(out.stdout)}

    def command(self, *extra, settle="1s", converge_timeout="60s"):
        if self.vault is None:
            backend = ["--key-file", str(self.tmp / "node0" / "kek.json"), "--sync-command", f"sh {self.sync_script} {{file}}"]
        else:
            # An operator token of its own (kekd's token should not be allowed to rotate or configure the key).
            operator = self.tmp / "operator-token"
            operator.write_text(self.vault.control("token", {"ttl": 0})["token"] + "\n")
            os.chmod(operator, 0o600)
            flags = self.vault.kekd_flags()
            flags[flags.index("--vault-token-file") + 1] = str(operator)
            backend = ["--backend", "vault", *flags]
        return [str(KEKCTL), "rotate-cluster", "--provider", "kekd", "--kubeconfig", str(self.kubeconfig), *backend,
                "--socket", self.kekds[0].socket, "--settle", settle, "--converge-timeout", converge_timeout,
                "--poll-interval", "1s", "--qps", "2000", "--concurrency", "4", "--etcd-endpoint", self.etcd.url,
                "--etcd-cacert", self.etcd.certs["ca.pem"], "--etcd-cert", self.etcd.certs["client.pem"],
                "--etcd-key", self.etcd.certs["client.key"],
                "--state-file", str(self.state_file), "--output", "json", *extra]

    def run(self, *extra, **kw):
        return subprocess.run(self.command(*extra, **kw), capture_output=True, text=True, timeout=600, env=clean_env())

    def stop(self):
        for a in self.apiservers:
            a.stop()
        for k in self.kekds:
            k.stop()
        self.etcd.stop()


def clean_env():
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    return env


def events(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def vault_key(vault):
    """The transit key as Vault reports it (read with an operator token)."""
    import http.client
    token = vault.control("token", {"ttl": 0})["token"]
    conn = http.client.HTTPSConnection("127.0.0.1", vault.info["port"], context=vault._ssl, timeout=10)
    conn.request("GET", "/v1/transit/keys/" + vault.info["key"], headers={"X-Vault-Token": token})
    data = json.loads(conn.getresponse().read())["data"]
    conn.close()
    return data


@pytest.fixture
def plane(tmp_path, kms_pb, storage_pb):
    p = ControlPlane(tmp_path, kms_pb, storage_pb)
    yield p
    p.stop()


def assert_rotated(plane, old, count=SECRETS):
    new = plane.key_id(0)
    assert new != old
    assert stored_key_ids(plane.etcd, plane.storage_pb) == {new: count}
    for node in range(3):
        assert plane.key_id(node) == new, f"node {node} kekd does not report the new key"
        assert plane.versions(node)[old] == "retired"
        assert plane.versions(node)[new] == "primary"
    state = json.loads(plane.state_file.read_text())
    assert state["phase"] == "done" and state["retired"] and state["verified_by"] == "census"
    assert oct(os.stat(plane.state_file).st_mode & 0o777) == "0o600"
    return new


def test_rotates_migrates_proves_and_retires_2000_secrets(plane):
    plane.apiservers[0].create_secrets(SECRETS)
    old = plane.key_id(0)
    assert stored_key_ids(plane.etcd, plane.storage_pb) == {old: SECRETS}
    # A few faults on the way: throttling, a 503 and an expired continue token.
    plane.cluster.throttle_next = 3
    plane.cluster.fail_next = 2
    plane.cluster.expire_next_continue = True
    out = plane.run("--retire")
    assert out.returncode == 0, out.stderr + out.stdout
    new = assert_rotated(plane, old)
    evs = events(out.stdout)
    starts = [e["phase"] for e in evs if e["event"] == "start"]
    assert starts == ["preflight", "rotate", "converge", "settle", "migrate", "verify", "retire"]
    assert all(set(e) >= {"phase", "event", "message"} for e in evs)
    verify = [e for e in evs if e["phase"] == "verify" and e.get("method")]
    assert verify and verify[0]["method"] == "census" and new in verify[0]["message"]
    assert any("410 Gone" in e["message"] for e in evs)
    # Every stale Secret was rewritten once; none twice (the no-op PUT of a fresh object writes nothing).
    assert plane.cluster.rewrites == SECRETS
    # Unknown fields round-tripped through kekctl's PUT.
    sample = plane.apiservers[1].get_secret(b"/registry/secrets/team-a/secret-00002")[1]
    assert sample["unknownTopLevelField"] == {"kept": True}
    # Never a token, key bytes or Secret data in kekctl's output.
    assert plane.cluster.token not in out.stdout + out.stderr
    assert "password" not in out.stdout + out.stderr
    # Running the same command again does not rotate again.
    again = plane.run("--retire")
    assert again.returncode == 0 and plane.key_id(0) == new
    assert "already complete" in again.stdout


def test_killed_at_each_phase_and_resumed(plane):
    plane.apiservers[0].create_secrets(SECRETS)
    old = plane.key_id(0)
    # --qps slows the migrate phase down enough to be killed in the middle of it.
    kill_points = [("rotate", "start"), ("converge", "start"), ("settle", "start"), ("migrate", "progress"),
                   ("verify", "start"), ("retire", "start")]
    for phase, event in kill_points:
        proc = subprocess.Popen(plane.command("--retire", "--qps", "400", settle="3s"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=clean_env())
        seen = False
        for line in proc.stdout:
            e = json.loads(line)
            if e["phase"] == phase and e["event"] == event:
                proc.send_signal(signal.SIGKILL)
                seen = True
                break
        proc.wait(timeout=120)
        proc.stdout.close()
        proc.stderr.close()
        assert seen, f"never reached {phase} {event}"
        state = json.loads(plane.state_file.read_text())
        assert state["phase"] in ("rotate", "converge", "settle", "migrate", "verify", "retire"), state
    out = plane.run("--retire")
    assert out.returncode == 0, out.stderr + out.stdout
    assert_rotated(plane, old)
    assert plane.versions(0) and len(plane.versions(0)) == 2   # one rotation, however often it was resumed


def test_ctrl_c_leaves_a_resumable_state(plane):
    plane.apiservers[0].create_secrets(300)
    old = plane.key_id(0)
    proc = subprocess.Popen(plane.command("--retire", settle="8s"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env())
    for line in proc.stdout:
        if json.loads(line)["phase"] == "settle":
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "run the same command to resume" in err
    state = json.loads(plane.state_file.read_text())
    assert state["phase"] == "settle" and state["new_key_id"]
    out = plane.run("--retire", settle="1s")
    # The settle deadline was saved: the resumed run waits for what is left of the 8 s, not 1 s.
    assert out.returncode == 0, out.stderr + out.stdout
    assert_rotated(plane, old, count=300)


def test_lagging_node_blocks_converge_and_is_named(plane):
    plane.apiservers[0].create_secrets(50)
    old = plane.key_id(0)
    plane.set_sync_targets([1])            # the sync command "forgets" node 2
    out = plane.run("--retire", converge_timeout="8s")
    assert out.returncode == 1
    lagging = plane.apiservers[2].url
    assert lagging in out.stderr and "converge" in out.stderr
    assert plane.apiservers[1].url + " (" not in out.stderr
    assert stored_key_ids(plane.etcd, plane.storage_pb) == {old: 50}     # never moved on to migrate
    assert json.loads(plane.state_file.read_text())["phase"] == "converge"
    plane.set_sync_targets([1, 2])
    shutil.copy2(plane.tmp / "node0" / "kek.json", plane.tmp / "node2" / "kek.json")
    out = plane.run("--retire")
    assert out.returncode == 0, out.stderr + out.stdout
    assert_rotated(plane, old, count=50)


def test_preflight_refuses_an_apiserver_on_another_key(plane):
    plane.apiservers[0].create_secrets(5)
    subprocess.run([str(KEKCTL), "rotate", "--key-file", str(plane.tmp / "node1" / "kek.json")], check=True, capture_output=True)
    deadline = time.time() + 15
    while plane.key_id(1) == plane.key_id(0) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    out = plane.run("--retire")
    assert out.returncode == 3, out.stderr
    assert plane.apiservers[1].url in out.stderr
    assert not plane.state_file.exists()


def test_dry_run_changes_nothing(plane):
    plane.apiservers[0].create_secrets(120)
    old = plane.key_id(0)
    cmd = plane.command("--dry-run")
    cmd[cmd.index("--output") + 1] = "text"
    text = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    assert text.returncode == 0, text.stderr
    assert "would rewrite 120 secrets" in text.stdout
    assert plane.key_id(0) == old and plane.cluster.puts == 0
    assert not plane.state_file.exists()


def test_unusable_kubeconfig_is_one_line(plane, tmp_path):
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text(plane.kubeconfig.read_text().replace("    token:", "    auth-provider: {name: gcp}\n    token:"))
    cmd = plane.command()
    cmd[cmd.index("--kubeconfig") + 1] = str(bad)
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    assert out.returncode == 3
    assert "auth-provider is not supported" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_vault_rotation_and_retirement(tmp_path, kms_pb, storage_pb):
    from fake_vault import FakeVaultProcess
    with FakeVaultProcess(tmp_path / "vault") as vault:
        plane = ControlPlane(tmp_path, kms_pb, storage_pb, nodes=2, vault=vault)
        try:
            deadline = time.time() + 15
            while time.time() < deadline and not all(a.kms.key_id for a in plane.apiservers):
                time.sleep(0.1)
            plane.apiservers[0].create_secrets(300)
            old = plane.key_id(0)
            assert vault_key(vault)["latest_version"] == 1
            out = plane.run("--retire")
            assert out.returncode == 0, out.stderr + out.stdout
            new = plane.key_id(0)
            assert new != old and new.endswith("-v2") and plane.key_id(1) == new
            assert stored_key_ids(plane.etcd, plane.storage_pb) == {new: 300}
            key = vault_key(vault)
            assert key["latest_version"] == 2 and key["min_decryption_version"] == 2
            assert any("min_decryption_version to 2" in e["message"] for e in events(out.stdout))
        finally:
            plane.stop()


def test_unreachable_apiserver_is_refused_by_name(plane):
    dead = "https://127.0.0.1:1"
    out = plane.run("--apiservers", f"{plane.apiservers[0].url},{dead}")
    assert out.returncode == 3, out.stderr
    assert dead in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not plane.state_file.exists()


def test_etcd_refusing_the_certificate_fails_verify_resumably(plane):
    plane.apiservers[0].create_secrets(20)
    old = plane.key_id(0)
    cmd = plane.command("--retire")
    cmd[cmd.index("--etcd-cert") + 1] = plane.etcd.certs["other-client.pem"]
    cmd[cmd.index("--etcd-key") + 1] = plane.etcd.certs["other-client.key"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    assert out.returncode == 1
    assert "phase verify failed" in out.stderr and "certificate" in out.stderr
    state = json.loads(plane.state_file.read_text())
    assert state["phase"] == "verify" and not state["retired"]
    assert plane.versions(0)[old] == "active"              # never retired without the proof
    out = plane.run("--retire")
    assert out.returncode == 0, out.stderr + out.stdout
    assert_rotated(plane, old, count=20)


def test_exec_credential_plugin_and_expired_credentials(plane, tmp_path):
    plane.apiservers[0].create_secrets(7)
    # A managed cluster's kubeconfig: the token comes from an exec plugin (client.authentication.k8s.io/v1).
    plugin = tmp_path / "credential-plugin.sh"
    plugin.write_text('#!/bin/sh\ncase "$KUBERNETES_EXEC_INFO" in *ExecCredential*) ;; *) exit 9;; esac\n'
                      'printf \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
                      '"status":{"token":"%s","expirationTimestamp":"2099-01-01T00:00:00Z"}}\' "$TOKEN"\n')
    plugin.chmod(0o700)
    text = plane.kubeconfig.read_text()
    exec_user = ("    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: " + str(plugin) + "\n"
                 "      env:\n      - name: TOKEN\n        value: " + plane.cluster.token + "\n")
    managed = tmp_path / "managed-kubeconfig"
    managed.write_text(text.replace(f"    token: {plane.cluster.token}\n", exec_user))
    cmd = plane.command("--dry-run")
    cmd[cmd.index("--kubeconfig") + 1] = str(managed)
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert any("would rewrite 7 secrets" in e["message"] for e in events(out.stdout))
    # Expired (here: revoked) credentials: refused with a one-line reason, nothing changed, no token printed.
    expired = tmp_path / "expired-kubeconfig"
    expired.write_text(text.replace(plane.cluster.token, "expired-token-123"))
    cmd[cmd.index("--kubeconfig") + 1] = str(expired)
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    assert out.returncode == 3
    assert "credentials" in out.stderr and "expired-token-123" not in out.stderr + out.stdout
