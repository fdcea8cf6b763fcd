"""The deployment files under manifests/: every YAML parses and carries what a kubeadm control plane needs.

No cluster is involved; these checks pin the fields an operator would otherwise only find wrong at install time
(probe on the wrong port, key mounted as a file, identity provider first, ...), and keep the files consistent with
each other and with the operator's guide.
"""
import os
import posixpath
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
SOCKET_DIR = "/var/run/kmsplugin"
SOCKET_URL = "unix:///var/run/kmsplugin/socket.sock"
ENC_CONFIG_PATH = "/etc/kubernetes/enc/encryption-configuration.yaml"


def load_all(name):
    with open(MANIFESTS / name, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_one(name):
    docs = load_all(name)
    assert len(docs) == 1, f"{name}: expected one YAML document, found {len(docs)}"
    return docs[0]


@pytest.fixture(scope="module")
def pod():
    return load_one("kekd-static-pod.yaml")


@pytest.fixture(scope="module")
def kekd(pod):
    containers = pod["spec"]["containers"]
    assert [c["name"] for c in containers] == ["kekd"]
    return containers[0]


def flag_value(command, flag):
    """The value after `flag` (as `--flag value` or `--flag=value`) in a container command."""
    for i, arg in enumerate(command):
        if arg == flag:
            assert i + 1 < len(command), f"{flag} has no value"
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} missing from {command}")


def volumes_by_name(spec):
    return {v["name"]: v for v in spec.get("volumes", [])}


def mount_for(container, path):
    """The volumeMount of `container` whose mountPath is `path` or a parent folder of it."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"]):
                best = m
    assert best is not None, f"nothing mounted at {path} in {container['name']}"
    return best


def test_every_yaml_file_parses():
    files = sorted(MANIFESTS.glob("*.yaml")) + sorted(MANIFESTS.glob("*.yml"))
    names = {f.name for f in files}
    assert {"kekd-static-pod.yaml", "encryption-configuration.yaml", "kube-apiserver-changes.yaml"} <= names
    for f in files:
        docs = load_all(f.name)
        assert docs, f"{f.name} holds no document"
        for d in docs:
            assert isinstance(d, dict) and "apiVersion" in d and "kind" in d, f"{f.name}: not a Kubernetes object"


# ---- static pod -------------------------------------------------------------------------------------------------

def test_static_pod_placement(pod):
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["namespace"] == "kube-system"
    assert meta["labels"]["tier"] == "control-plane"
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    # Cluster DNS may not exist yet when the control plane boots.
    assert spec["dnsPolicy"] == "Default"
    # Must exceed kekd's default --shutdown-grace (5 s) so a graceful drain is not cut by SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > 5
    for key in ("serviceAccountName", "serviceAccount"):
        assert key not in spec, "static pods cannot use ServiceAccounts"


def test_static_pod_command(kekd):
    command = kekd["command"]
    assert command[:2] == ["kekd", "serve"]
    assert flag_value(command, "--listen") == SOCKET_URL
    assert flag_value(command, "--key-file") == "/etc/kekd/kek.json"
    assert flag_value(command, "--health-addr") == "127.0.0.1:8787"
    assert flag_value(command, "--audit-log") == "/var/log/kekd/audit.log"
    assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+", kekd["image"]), "image needs an explicit tag"
    assert kekd["image"] != "" and not kekd["image"].endswith(":latest")


@pytest.mark.parametrize("probe,liveness", [("livenessProbe", True), ("readinessProbe", False),
                                            ("startupProbe", True)])
def test_probes_call_status_over_the_socket(kekd, probe, liveness):
    # exec probes: a TCP health port can be occupied or exhausted by any local user, kekd's socket cannot.
    p = kekd[probe]
    assert "httpGet" not in p and "tcpSocket" not in p
    command = p["exec"]["command"]
    assert command[:2] == ["kekctl", "status"]
    assert flag_value(command, "--socket") == SOCKET_URL[len("unix://"):] == flag_value(kekd["command"], "--listen")[len("unix://"):]
    # Liveness must not restart kekd for a backend outage: only "kekd does not answer" fails it.
    assert ("--liveness" in command) == liveness
    timeout = flag_value(command, "--timeout")
    assert re.fullmatch(r"\d+s", timeout)
    # kekctl gives up before the kubelet does, so a hung kekd is a clean probe failure.
    assert int(timeout[:-1]) < p["timeoutSeconds"] < p.get("periodSeconds", 10)
    assert p["failureThreshold"] >= 1


def test_http_probes_stay_documented_as_the_alternative(kekd):
    text = (MANIFESTS / "kekd-static-pod.yaml").read_text(encoding="utf-8")
    host, port = flag_value(kekd["command"], "--health-addr").rsplit(":", 1)
    commented = [l.strip().lstrip("#").strip() for l in text.splitlines() if l.strip().startswith("#")]
    for path in ("/livez", "/readyz"):
        assert any(f"host: {host}" in l and f"port: {port}" in l and f"path: {path}" in l for l in commented), path


def test_kekd_uid_is_dedicated(kekd):
    uid = kekd["securityContext"]["runAsUser"]
    assert kekd["securityContext"]["runAsGroup"] == uid
    # Not a uid other images run as (distroless nonroot, nobody, common USER values) ...
    assert uid not in {0, 1000, 1001, 10001, 65532, 65533, 65534, 65535}
    # ... nor one systemd hands out on the host (regular users, homed, DynamicUser=), nor a user-namespace pod uid.
    assert 60706 <= uid <= 61183


def test_allowed_uids_are_root_only(kekd):
    command = kekd["command"]
    if "--allowed-uids" in command:
        assert flag_value(command, "--allowed-uids") == "0"
    assert "--status-only-uids" not in command   # the default (kekd's own uid) serves the exec probes


def test_liveness_is_not_more_eager_than_readiness(kekd):
    live, ready = kekd["livenessProbe"], kekd["readinessProbe"]
    live_window = live["periodSeconds"] * live["failureThreshold"]
    ready_window = ready["periodSeconds"] * ready["failureThreshold"]
    assert live_window >= ready_window
    assert live_window >= 20, "a liveness restart loop must not trigger on one slow scrape"


def test_resources_have_requests_and_limits(kekd):
    res = kekd["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind]), f"resources.{kind}"
    mem = {k: res[k]["memory"] for k in ("requests", "limits")}
    to_mib = lambda s: int(s[:-2]) * (1024 if s.endswith("Gi") else 1) if s[-2:] in ("Mi", "Gi") else None
    assert to_mib(mem["requests"]) and to_mib(mem["limits"]) and to_mib(mem["requests"]) <= to_mib(mem["limits"])


def test_kekd_container_security_context(pod, kekd):
    sc = kekd["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    seccomp = sc.get("seccompProfile") or pod["spec"]["securityContext"]["seccompProfile"]
    assert seccomp["type"] == "RuntimeDefault"


def init_steps(container):
    """The commands of an init container's `sh -c` script, split on &&."""
    command = container["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3
    return [step.split() for step in command[2].split("&&")]


def test_only_the_init_container_runs_as_root_and_only_chowns(pod, kekd):
    for c in pod["spec"].get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"CHOWN"}
        assert {step[0] for step in init_steps(c)} <= {"chown", "chmod"}
        assert "resources" in c


def test_host_folders_are_mounted(pod, kekd):
    vols = volumes_by_name(pod["spec"])
    command = kekd["command"]

    sock = mount_for(kekd, SOCKET_URL[len("unix://"):])
    assert sock["mountPath"] == SOCKET_DIR and not sock.get("readOnly", False)
    assert vols[sock["name"]]["hostPath"] == {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}

    key_file = flag_value(command, "--key-file")
    key = mount_for(kekd, key_file)
    assert key["readOnly"] is True
    # The folder, not the file: `kekctl rotate` replaces the file by rename; a file bind mount would pin the old inode.
    assert key["mountPath"] == posixpath.dirname(key_file)
    assert "subPath" not in key
    assert vols[key["name"]]["hostPath"]["path"] == posixpath.dirname(key_file)
    assert vols[key["name"]]["hostPath"]["type"] == "Directory"

    audit_file = flag_value(command, "--audit-log")
    audit = mount_for(kekd, audit_file)
    assert not audit.get("readOnly", False)
    assert vols[audit["name"]]["hostPath"] == {"path": posixpath.dirname(audit_file), "type": "DirectoryOrCreate"}

    state = mount_for(kekd, "/var/lib/kekd/usage.json")
    assert state["mountPath"] == "/var/lib/kekd" and not state.get("readOnly", False)
    assert vols[state["name"]]["hostPath"] == {"path": "/var/lib/kekd", "type": "DirectoryOrCreate"}

    # The audit and state folders are handed to kekd's uid; the socket folder stays root's, kekd's group may only
    # create and remove entries in it (0730: no listing), everybody else may not enter.
    uid = kekd["securityContext"]["runAsUser"]
    (init,) = pod["spec"]["initContainers"]
    steps = init_steps(init)
    chowned = {path: step[1] for step in steps if step[0] == "chown" for path in step[2:]}
    chmodded = {path: step[1] for step in steps if step[0] == "chmod" for path in step[2:]}
    assert chowned == {SOCKET_DIR: f"0:{uid}", posixpath.dirname(audit_file): f"{uid}:{uid}", "/var/lib/kekd": f"{uid}:{uid}"}
    assert chmodded == {SOCKET_DIR: "0730"}
    # chmod while root still owns the folder: after the chown it would need CAP_FOWNER too.
    assert steps.index(["chmod", "0730", SOCKET_DIR]) < steps.index(["chown", f"0:{uid}", SOCKET_DIR])

    # Every mount refers to a declared volume, every volume is used.
    used = {m["name"] for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
            for m in c.get("volumeMounts", [])}
    assert used == set(vols)


# ---- EncryptionConfiguration ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encryption_config():
    return load_one("encryption-configuration.yaml")


def test_encryption_configuration(encryption_config, kekd):
    cfg = encryption_config
    assert cfg["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert cfg["kind"] == "EncryptionConfiguration"
    assert len(cfg["resources"]) == 1
    rule = cfg["resources"][0]
    assert rule["resources"] == ["secrets"]
    providers = rule["providers"]
    assert len(providers) == 2
    kms = providers[0]["kms"]
    assert kms["apiVersion"] == "v2", "without apiVersion the apiserver defaults to KMS v1"
    assert kms["name"] == "kekd" and ":" not in kms["name"]
    assert kms["endpoint"] == SOCKET_URL == flag_value(kekd["command"], "--listen")
    assert kms["timeout"] == "3s"
    assert "cachesize" not in kms, "cachesize is an error for KMS v2"
    # identity last: it must never be the provider that writes.
    assert providers[-1] == {"identity": {}}


# ---- kube-apiserver changes -------------------------------------------------------------------------------------

def test_kubeadm_cluster_configuration():
    docs = {d["kind"]: d for d in load_all("kube-apiserver-changes.yaml")}
    cc = docs["ClusterConfiguration"]
    assert cc["apiVersion"].startswith("kubeadm.k8s.io/")
    args = {a["name"]: a["value"] for a in cc["apiServer"]["extraArgs"]}
    assert args["encryption-provider-config"] == ENC_CONFIG_PATH
    assert args.get("encryption-provider-config-automatic-reload", "true") in ("true", "false")
    mounts = {v["mountPath"]: v for v in cc["apiServer"]["extraVolumes"]}
    assert mounts[posixpath.dirname(ENC_CONFIG_PATH)]["hostPath"] == posixpath.dirname(ENC_CONFIG_PATH)
    assert mounts[SOCKET_DIR]["hostPath"] == SOCKET_DIR


def test_kube_apiserver_manifest_fragment():
    docs = {d["kind"]: d for d in load_all("kube-apiserver-changes.yaml")}
    pod = docs["Pod"]
    assert pod["metadata"]["namespace"] == "kube-system"
    (api,) = [c for c in pod["spec"]["containers"] if c["name"] == "kube-apiserver"]
    assert f"--encryption-provider-config={ENC_CONFIG_PATH}" in api["command"]
    vols = volumes_by_name(pod["spec"])
    for path in (ENC_CONFIG_PATH, SOCKET_URL[len("unix://"):]):
        m = mount_for(api, path)
        host = vols[m["name"]]["hostPath"]["path"]
        assert host == m["mountPath"], "the apiserver must see the same paths as the host"


# ---- Containerfile and the guide --------------------------------------------------------------------------------

def test_containerfile(kekd):
    text = (MANIFESTS / "Containerfile").read_text(encoding="utf-8")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0], "multi-stage build"
    assert re.search(r"ARG SWIFT_IMAGE=swift:6\.\d+", text)
    assert re.search(r"swift build -c release --static-swift-stdlib --product kekd\b", text)
    assert "libssl3" in text and "ca-certificates" in text
    uid = kekd["securityContext"]["runAsUser"]
    assert f"USER {uid}:{uid}" in lines, "numeric non-root USER matching the static pod"
    assert 'ENTRYPOINT ["kekd"]' in lines
    assert lines.index(next(l for l in lines if l.startswith("USER"))) > lines.index(froms[-1])


def binary_flags():
    """Every flag kekd and kekctl actually accept, read from their --help output."""
    import subprocess
    from conftest import KEKCTL, KEKD
    texts = [subprocess.run([str(KEKD), "serve", "--help"], capture_output=True, text=True).stdout]
    for sub in ("init", "rotate", "list", "retire", "prune", "status", "encrypt", "decrypt", "bench", "doctor",
                "rotate-cluster", "census", "pkcs11"):
        texts.append(subprocess.run([str(KEKCTL), sub, "--help"], capture_output=True, text=True).stdout)
    texts.append(subprocess.run([str(KEKCTL), "audit", "verify", "--help"], capture_output=True, text=True).stdout)
    flags = set()
    for t in texts:
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", t))
    assert "--listen" in flags and "--key-id" in flags, "help output not found"
    # kekd's help states the rule for decrypt-only backends: every backend flag also exists with the prefix
    # decrypt-also- (--decrypt-also-pkcs11-module ...); those spellings are as real as the flags they prefix.
    serve = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", texts[0]))
    assert "--decrypt-also" in serve
    flags |= {"--decrypt-also-" + f[2:] for f in serve if f.startswith(("--key-file", "--vault-", "--pkcs11-"))}
    return flags | {"--help"}


OTHER_TOOL_FLAGS = {
    "--encryption-provider-config", "--encryption-provider-config-automatic-reload", "--allowed-uids",
    "--reuid", "--regid", "--clear-groups", "--name", "--cacert", "--cert", "--key", "--print-value-only",
    "--raw", "--from-literal", "--config",
    "--now", "--create", "--kube-apiserver-arg",   # systemctl, systemd-tmpfiles, k3s (sections 9 and 10)
    "--init-token", "--free", "--label", "--pin", "--so-pin", "--list-tokens",   # softhsm2-util, p11tool (section 3a)
}


def test_guide_covers_the_procedures_and_uses_only_known_flags():
    guide = (MANIFESTS / "README.md").read_text(encoding="utf-8")
    for must in ("kekctl init", "kekctl rotate", "kekctl status", "kekctl retire", "etcdctl",
                 "k8s:enc:kms:v2:kekd:", "kubectl get secrets -A -o json | kubectl replace -f -",
                 "/etc/kubernetes/manifests", "--vault-addr", "/var/log/kekd/audit.log", "Troubleshooting",
                 "Back up", "Upgrade"):
        assert must in guide, f"guide lacks {must!r}"
    unknown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", guide)) - binary_flags() - OTHER_TOOL_FLAGS
    assert not unknown, f"flags no issue defines: {sorted(unknown)}"
    # Every file the guide tells the operator to place exists.
    for name in ("kekd-static-pod.yaml", "encryption-configuration.yaml", "kube-apiserver-changes.yaml",
                 "Containerfile"):
        assert name in guide and (MANIFESTS / name).exists()
    for name in ("systemd/kekd.service", "systemd/kekd.sysusers", "systemd/kekd.tmpfiles", "monitoring/kekd-rules.yaml",
                 "monitoring/kekd-prometheusrule.yaml", "monitoring/kekd-dashboard.json"):
        assert posixpath.basename(name) in guide and (MANIFESTS / name).exists(), name
    for must in ("systemctl enable --now kekd", "kube-apiserver-arg:", "encryption-provider-config=", "/etc/rancher/k3s/"):
        assert must in guide, f"guide lacks {must!r}"


# ---- systemd unit (manifests/systemd/) -------------------------------------------------------------------------

SYSTEMD = MANIFESTS / "systemd"
SYSTEMD_SOCKET = "/run/kmsplugin/socket.sock"


def unit_settings(text):
    """{section: {key: [values in order]}} of a systemd unit: continuation lines joined, comments dropped."""
    sections, current = {}, None
    logical = re.sub(r"\\\n\s*", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit():
    return unit_settings((SYSTEMD / "kekd.service").read_text(encoding="utf-8"))


def one(settings, key):
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def seconds(value):
    m = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[m.group(2)]


def test_systemd_unit_runs_kekd_as_a_notify_service(unit):
    service = unit["Service"]
    assert one(service, "Type") == "notify" and one(service, "NotifyAccess") == "main"
    assert seconds(one(service, "WatchdogSec")) >= 10
    command = one(service, "ExecStart").split()
    assert command[:2] == ["/usr/local/bin/kekd", "serve"]
    assert flag_value(command, "--listen") == "unix://" + SYSTEMD_SOCKET
    assert flag_value(command, "--key-file") == "/etc/kekd/kek.json"
    assert flag_value(command, "--health-addr") == "127.0.0.1:8787"
    # Stopping: SIGTERM, and systemd waits longer than kekd's drain before it kills.
    assert one(service, "KillSignal") == "SIGTERM"
    assert seconds(one(service, "TimeoutStopSec")) > seconds(flag_value(command, "--shutdown-grace"))
    assert one(service, "Restart") == "on-failure"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "network-online.target" in one(unit["Unit"], "After")
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_systemd_unit_sandbox(unit):
    service = unit["Service"]
    assert one(service, "User") == one(service, "Group") == "kekd"
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces",
                "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute"):
        assert one(service, key) == "yes", key
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "CapabilityBoundingSet") == "" and one(service, "AmbientCapabilities") == ""
    assert set(one(service, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["SystemCallFilter"][0] == "@system-service"
    # Writable: exactly the socket, state and audit folders kekd is pointed at.
    command = one(service, "ExecStart").split()
    writable = set(one(service, "ReadWritePaths").split())
    assert writable == {posixpath.dirname(SYSTEMD_SOCKET), flag_value(command, "--state-dir"),
                        posixpath.dirname(flag_value(command, "--audit-log"))}
    assert "/run/" + one(service, "RuntimeDirectory") == posixpath.dirname(SYSTEMD_SOCKET)
    assert "/var/lib/" + one(service, "StateDirectory") == flag_value(command, "--state-dir")
    assert "/var/log/" + one(service, "LogsDirectory") == posixpath.dirname(flag_value(command, "--audit-log"))
    # A restart must not delete the socket folder under the apiserver's feet.
    assert one(service, "RuntimeDirectoryPreserve") == "yes"


def test_systemd_unit_flags_are_kekd_flags(unit):
    flags = {a for a in one(unit["Service"], "ExecStart").split() if a.startswith("--")}
    assert flags and flags <= binary_flags()


def test_systemd_unit_socket_is_the_encryption_configuration_endpoint(encryption_config):
    # /var/run is a symlink to /run on every systemd host: the static pod's path and the unit's are one file.
    endpoint = encryption_config["resources"][0]["providers"][0]["kms"]["endpoint"]
    assert endpoint.replace("unix:///var/run/", "unix:///run/") == "unix://" + SYSTEMD_SOCKET


def systemd_analyze_verify(tmp_path, unit_text):
    """`systemd-analyze verify` on a copy of the unit whose ExecStart points at the kekd just built: verify refuses
    a unit whose binary does not exist, and /usr/local/bin/kekd is not installed on a test machine."""
    from conftest import KEKD
    copy = tmp_path / "kekd.service"
    copy.write_text(unit_text.replace("ExecStart=/usr/local/bin/kekd ", f"ExecStart={KEKD} "))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          cwd=tmp_path)


needs_systemd_tools = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd not installed (CI installs it)")


@needs_systemd_tools
def test_systemd_analyze_verify_passes(tmp_path):
    text = (SYSTEMD / "kekd.service").read_text(encoding="utf-8")
    out = systemd_analyze_verify(tmp_path, text)
    # verify exits 0 on unknown keys but prints them: a clean unit prints nothing at all.
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    # And the check can fail: a misspelt setting is reported.
    broken = systemd_analyze_verify(tmp_path, text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "NoNewPrivilege" in broken.stdout + broken.stderr


@needs_systemd_tools
def test_systemd_analyze_security_rates_the_unit_well_sandboxed(tmp_path):
    copy = tmp_path / "kekd.service"
    copy.write_text((SYSTEMD / "kekd.service").read_text(encoding="utf-8"))
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
                         capture_output=True, text=True, cwd=tmp_path)
    m = re.search(r"Overall exposure level for kekd\.service: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    # 0 is a fully locked-down unit, 10 an unsandboxed one; systemd calls anything below 2.0 "OK".
    assert float(m.group(1)) < 2.0, out.stdout


@needs_systemd_tools
def test_sysusers_and_tmpfiles_create_the_user_and_folders(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "kekd.sysusers")],
                              capture_output=True, text=True)
    assert sysusers.returncode == 0, sysusers.stderr
    (entry,) = [l.split(":") for l in (root / "etc/passwd").read_text().splitlines() if l.startswith("kekd:")]
    uid, gid = int(entry[2]), int(entry[3])
    # A system uid chosen by sysusers (not the image's fixed 65532), with no login shell.
    assert 0 < uid < 1000 and uid != 65532
    assert entry[5] == "/var/lib/kekd" and entry[6] == "/usr/sbin/nologin"
    assert any(l.startswith(f"kekd:x:{gid}:") for l in (root / "etc/group").read_text().splitlines())

    tmpfiles = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(SYSTEMD / "kekd.tmpfiles")],
                              capture_output=True, text=True)
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    expected = {"etc/kekd": 0o700, "var/lib/kekd": 0o700, "var/log/kekd": 0o700, "run/kmsplugin": 0o755}
    for path, mode in expected.items():
        st = os.stat(root / path)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == mode, path
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (uid, gid), f"{path} owned by the kekd user of the same root"
