"""The deployment files under manifests/: every YAML parses and carries what a kubeadm control plane needs.

No cluster is involved; these checks pin the fields an operator would otherwise only find wrong at install time
(probe on the wrong port, key mounted as a file, identity provider first, ...), and keep the files consistent with
each other and with the operator's guide.
"""
import posixpath
import re
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


@pytest.mark.parametrize("probe,path", [("livenessProbe", "/livez"), ("readinessProbe", "/readyz"),
                                        ("startupProbe", "/livez")])
def test_probes_hit_the_health_endpoint_on_loopback(kekd, probe, path):
    p = kekd[probe]
    get = p["httpGet"]
    host, port = flag_value(kekd["command"], "--health-addr").rsplit(":", 1)
    assert get["path"] == path
    assert get["port"] == int(port)
    # With hostNetwork the kubelet probes the node IP unless told otherwise; kekd listens on loopback only.
    assert get["host"] == host == "127.0.0.1"
    assert get.get("scheme", "HTTP") == "HTTP"
    assert 1 <= p["timeoutSeconds"] < p.get("periodSeconds", 10)
    assert p["failureThreshold"] >= 1


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


def test_only_the_init_container_runs_as_root_and_only_chowns(pod, kekd):
    uid = kekd["securityContext"]["runAsUser"]
    for c in pod["spec"].get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"CHOWN"}
        assert c["command"][0] == "chown" and c["command"][1] == f"{uid}:{uid}"
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

    # Every folder kekd writes on the host is handed to its uid by the init container.
    uid = kekd["securityContext"]["runAsUser"]
    (init,) = pod["spec"]["initContainers"]
    assert init["command"][:2] == ["chown", f"{uid}:{uid}"]
    assert set(init["command"][2:]) == {SOCKET_DIR, posixpath.dirname(audit_file), "/var/lib/kekd"}

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
    for sub in ("init", "rotate", "list", "retire", "prune", "status", "encrypt", "decrypt", "bench", "doctor"):
        texts.append(subprocess.run([str(KEKCTL), sub, "--help"], capture_output=True, text=True).stdout)
    texts.append(subprocess.run([str(KEKCTL), "audit", "verify", "--help"], capture_output=True, text=True).stdout)
    flags = set()
    for t in texts:
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", t))
    assert "--listen" in flags and "--key-id" in flags, "help output not found"
    return flags | {"--help"}


OTHER_TOOL_FLAGS = {
    "--encryption-provider-config", "--encryption-provider-config-automatic-reload", "--allowed-uids",
    "--reuid", "--regid", "--clear-groups", "--name", "--cacert", "--cert", "--key", "--print-value-only",
    "--raw", "--from-literal", "--config",
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
