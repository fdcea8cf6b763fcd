"""kekctl's key lifecycle subcommands, driven through the built binary: init, rotate, list, retire, prune, their exit
codes (0 ok, 1 failure, 2 usage), refusals, file mode, the lock, and crash safety of rotate."""
import base64
import datetime
import json
import os
import pathlib
import random
import signal
import stat
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bin_dir() -> pathlib.Path:
    env = os.environ.get("KEKD_BIN_DIR")
    if env:
        return pathlib.Path(env)
    out = subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, check=True, capture_output=True, text=True)
    return pathlib.Path(out.stdout.strip())


KEKCTL = str(_bin_dir() / "kekctl")


def kekctl(*args, check=None):
    proc = subprocess.run([KEKCTL, *args], capture_output=True, text=True, timeout=30)
    if check is not None:
        assert proc.returncode == check, f"kekctl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def listed(path, *extra):
    return json.loads(kekctl("list", "--key-file", path, "--json", *extra, check=0).stdout)


def rfc3339(delta: datetime.timedelta) -> str:
    """As the audit log writes usage times: nanosecond fraction, Z."""
    t = datetime.datetime.now(datetime.timezone.utc) - delta
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond * 1000:09d}Z"


@pytest.fixture
def key_file(tmp_path):
    path = str(tmp_path / "keys" / "kek.json")
    kekctl("init", "--key-file", path, check=0)
    return path


def test_init_creates_a_private_file_and_refuses_to_overwrite(tmp_path):
    path = str(tmp_path / "a" / "b" / "kek.json")
    out = kekctl("init", "--key-file", path, check=0).stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    versions = listed(path)
    assert [(v["version"], v["state"]) for v in versions] == [(1, "primary")]
    assert versions[0]["key_id"] in out
    before = pathlib.Path(path).read_bytes()
    again = kekctl("init", "--key-file", path, check=1)
    assert "refusing to overwrite" in again.stderr
    assert pathlib.Path(path).read_bytes() == before
    # Two inits never share a key_id.
    other = str(tmp_path / "other.json")
    kekctl("init", "--key-file", other, check=0)
    assert listed(other)[0]["key_id"] != versions[0]["key_id"]


def test_help_lists_every_command_with_its_summary_in_one_column():
    """`kekctl --help` and the usage printed for no command: each command name, at least two spaces, its summary; the
    summaries in one column (a name as long as rotate-cluster once ran into its text)."""
    import re
    for text in (kekctl("--help", check=0).stdout, kekctl(check=2).stderr):
        rows = [line for line in text.splitlines() if line.startswith("  ")]
        parsed = [re.fullmatch(r"(  (\S+) {2,})(\S.*)", row) for row in rows]
        assert all(parsed), text
        assert [m.group(2) for m in parsed] == ["init", "rotate", "list", "retire", "prune", "pkcs11", "audit", "status",
                                                "encrypt", "decrypt", "bench", "doctor", "census", "rotate-cluster"]
        assert len({len(m.group(1)) for m in parsed}) == 1, text
        assert dict((m.group(2), m.group(3)) for m in parsed)["rotate-cluster"].startswith("rotate the KMS key")


@pytest.mark.parametrize("command", ["init", "rotate", "list", "retire", "prune"])
def test_usage_errors_and_help(command, key_file):
    helped = kekctl(command, "--help", check=0)
    assert helped.stdout.startswith(f"usage: kekctl {command}")
    assert kekctl(command, check=2).stderr.startswith("kekctl: --key-file is required")
    assert kekctl(command, "--key-file", key_file, "--bogus", check=2).returncode == 2
    assert kekctl(command, "--key-file", key_file, "stray", check=2).returncode == 2


def test_rotate_list_retire_prune(key_file, tmp_path):
    v1 = listed(key_file)[0]["key_id"]
    out = kekctl("rotate", "--key-file", key_file, check=0).stdout
    versions = listed(key_file)
    assert [(v["version"], v["state"]) for v in versions] == [(2, "primary"), (1, "active")]
    v2 = versions[0]["key_id"]
    assert f"old key_id: {v1}" in out and f"new key_id: {v2}" in out
    for v in versions:
        assert set(v) == {"version", "key_id", "state", "created"}
        datetime.datetime.strptime(v["created"], "%Y-%m-%dT%H:%M:%SZ")

    refused = kekctl("retire", "--key-file", key_file, "--key-id", v2, check=1)
    assert "primary" in refused.stderr
    unknown = kekctl("retire", "--key-file", key_file, "--key-id", "kekd-v9-000000000000000000000000", check=1)
    assert "no key version" in unknown.stderr

    state_dir = tmp_path / "state"   # explicit and empty: the result never depends on the host's /var/lib/kekd
    retired = kekctl("retire", "--key-file", key_file, "--state-dir", str(state_dir), "--key-id", v1, check=0)
    assert f"no usage data at {state_dir}/usage.json" in retired.stderr   # says so when it cannot check
    assert [v["state"] for v in listed(key_file)] == ["primary", "retired"]
    assert "already retired" in kekctl("retire", "--key-file", key_file, "--key-id", v1, check=0).stdout

    pruned = kekctl("prune", "--key-file", key_file, check=0).stdout
    assert v1 in pruned
    assert [v["key_id"] for v in listed(key_file)] == [v2]
    assert "nothing to prune" in kekctl("prune", "--key-file", key_file, check=0).stdout
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_two_step_rotation(key_file):
    v1 = listed(key_file)[0]["key_id"]
    out = kekctl("rotate", "--key-file", key_file, "--stage", check=0).stdout
    versions = listed(key_file)
    assert [(v["version"], v["state"]) for v in versions] == [(2, "active"), (1, "primary")]
    v2 = versions[0]["key_id"]
    assert f"staged key_id: {v2}" in out
    assert kekctl("rotate", "--key-file", key_file, "--stage", "--promote", v2, check=2).returncode == 2
    assert kekctl("rotate", "--key-file", key_file, "--promote", "kekd-v9-000000000000000000000000", check=1).returncode == 1
    out = kekctl("rotate", "--key-file", key_file, "--promote", v2, check=0).stdout
    assert f"old key_id: {v1}" in out and f"new key_id: {v2}" in out
    assert [(v["version"], v["state"]) for v in listed(key_file)] == [(2, "primary"), (1, "active")]
    assert "older than the primary" in kekctl("rotate", "--key-file", key_file, "--promote", v1, check=1).stderr


def test_list_never_prints_key_bytes(key_file):
    kekctl("rotate", "--key-file", key_file, check=0)
    content = json.loads(pathlib.Path(key_file).read_text())
    secrets = [v["key"] for v in content["versions"]] + [content["audit_secret"]]
    outputs = [kekctl("list", "--key-file", key_file, check=0), kekctl("list", "--key-file", key_file, "--json", check=0),
               kekctl("rotate", "--key-file", key_file, check=0)]
    for proc in outputs:
        for secret in secrets:
            assert secret not in proc.stdout + proc.stderr
            assert base64.b64decode(secret).hex() not in proc.stdout + proc.stderr


def test_retire_consults_usage_data(key_file, tmp_path):
    old = listed(key_file)[0]["key_id"]
    kekctl("rotate", "--key-file", key_file, check=0)
    usage = pathlib.Path(key_file).parent / "usage.json"   # the default location
    usage.write_text(json.dumps({"keys": {old: {"last_encrypt": rfc3339(datetime.timedelta(days=3)),
                                                 "last_decrypt": rfc3339(datetime.timedelta(hours=2))}}}))
    by_id = {v["key_id"]: v for v in listed(key_file)}
    assert "last_used_decrypt" in by_id[old] and "last_used_encrypt" in by_id[old]
    assert "last_used_decrypt" not in [k for v in by_id.values() if v["key_id"] != old for k in v]

    refused = kekctl("retire", "--key-file", key_file, "--key-id", old, check=1)
    assert "decrypted something" in refused.stderr and "--force" in refused.stderr
    assert listed(key_file)[1]["state"] == "active"
    # Outside a shorter window it may go.
    kekctl("retire", "--key-file", key_file, "--key-id", old, "--unused-for", "1h", check=0)
    assert listed(key_file)[1]["state"] == "retired"

    kekctl("rotate", "--key-file", key_file, check=0)
    second = listed(key_file)[1]["key_id"]
    other_usage = tmp_path / "elsewhere.json"
    other_usage.write_text(json.dumps({"keys": {second: {"last_decrypt": rfc3339(datetime.timedelta(minutes=5))}}}))
    kekctl("retire", "--key-file", key_file, "--key-id", second, "--usage-file", str(other_usage), check=1)
    forced = kekctl("retire", "--key-file", key_file, "--key-id", second, "--usage-file", str(other_usage), "--force", check=0)
    assert "--force" in forced.stderr
    assert kekctl("retire", "--key-file", key_file, "--key-id", second, "--unused-for", "banana", check=2).returncode == 2


def test_usage_data_is_read_only_where_the_caller_says(key_file, tmp_path):
    """--state-dir DIR reads DIR/usage.json; without a flag kekctl reads usage.json next to the key file and never a
    host default such as /var/lib/kekd/usage.json. The host folder is simulated in a private mount namespace (a
    tmpfs over /var/lib seen by this kekctl alone), so the test touches no host path."""
    old = listed(key_file)[0]["key_id"]
    kekctl("rotate", "--key-file", key_file, check=0)
    recent = json.dumps({"keys": {old: {"last_decrypt": rfc3339(datetime.timedelta(minutes=5))}}})
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "usage.json").write_text(recent)
    refused = kekctl("retire", "--key-file", key_file, "--state-dir", str(state_dir), "--key-id", old, check=1)
    assert "decrypted something" in refused.stderr
    assert kekctl("list", "--key-file", key_file, "--state-dir", str(state_dir), "--usage-file", "x", check=2).returncode == 2

    script = ('mount -t tmpfs tmpfs /var/lib && mkdir -p /var/lib/kekd && printf %s "$USAGE" > /var/lib/kekd/usage.json '
              '&& exec "$KEKCTL" retire --key-file "$KEY_FILE" --key-id "$KEY_ID"')
    env = dict(os.environ, USAGE=recent, KEKCTL=KEKCTL, KEY_FILE=key_file, KEY_ID=old)
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (unshare --mount needs CAP_SYS_ADMIN)")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert f"no usage data at {pathlib.Path(key_file).parent}/usage.json" in proc.stderr
    assert listed(key_file)[1]["state"] == "retired"


def test_broken_usage_file_blocks_retire_unless_forced(key_file):
    old = listed(key_file)[0]["key_id"]
    kekctl("rotate", "--key-file", key_file, check=0)
    (pathlib.Path(key_file).parent / "usage.json").write_text("{not json")
    assert "unreadable" in kekctl("retire", "--key-file", key_file, "--key-id", old, check=1).stderr
    kekctl("retire", "--key-file", key_file, "--key-id", old, "--force", check=0)
    assert "ignoring usage file" in kekctl("list", "--key-file", key_file, check=0).stderr


def test_bad_key_files_fail_with_a_clear_message(key_file, tmp_path):
    os.chmod(key_file, 0o644)
    assert "chmod 600" in kekctl("list", "--key-file", key_file, check=1).stderr
    assert "chmod 600" in kekctl("rotate", "--key-file", key_file, check=1).stderr
    os.chmod(key_file, 0o600)
    data = bytearray(pathlib.Path(key_file).read_bytes())
    i = data.index(b'"key": "') + 10
    data[i] = ord("A") if data[i] != ord("A") else ord("B")
    pathlib.Path(key_file).write_bytes(bytes(data))
    assert "checksum" in kekctl("list", "--key-file", key_file, check=1).stderr
    assert "checksum" in kekctl("rotate", "--key-file", key_file, check=1).stderr
    assert pathlib.Path(key_file).read_bytes() == bytes(data)   # a failed rotate writes nothing
    assert "does not exist" in kekctl("list", "--key-file", str(tmp_path / "missing"), check=1).stderr


def test_first_format_key_file_loads_and_converts(tmp_path):
    path = tmp_path / "legacy.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(path, 0o600)
    before = listed(str(path))
    assert [(v["version"], v["state"]) for v in before] == [(1, "primary")]
    kekctl("rotate", "--key-file", str(path), check=0)
    after = listed(str(path))
    assert [(v["version"], v["state"]) for v in after] == [(2, "primary"), (1, "active")]
    assert after[1]["key_id"] == before[0]["key_id"]   # ciphertexts under the first format keep their key_id
    assert json.loads(path.read_text())["kind"] == "kekd-key-file"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_first_format_key_id_reveals_nothing_cheap_and_text_keys_are_refused(tmp_path):
    """The key_id of a first-format key comes from a PBKDF2 file id (recomputed here with Python's hashlib), not from
    one SHA-256 of the key as in the first release; a key file that is printable text (a passphrase) is refused."""
    import hashlib
    key = os.urandom(32)
    while all(0x20 <= b < 0x7F or b in (9, 10, 13) for b in key):   # astronomically unlikely, but keep the test exact
        key = os.urandom(32)
    path = tmp_path / "legacy.key"
    path.write_bytes(key)
    os.chmod(path, 0o600)
    file_id = hashlib.pbkdf2_hmac("sha256", key, b"kekd legacy key file id v2", 100_000, 16)
    expected = "kekd-v1-" + hashlib.sha256(b"kekd key_id v1\0" + file_id + (1).to_bytes(4, "big")).hexdigest()[:24]
    first_release = hashlib.sha256(b"kekd legacy key file id v1\0" + key).digest()[:16]
    old = "kekd-v1-" + hashlib.sha256(b"kekd key_id v1\0" + first_release + (1).to_bytes(4, "big")).hexdigest()[:24]
    assert [v["key_id"] for v in listed(str(path))] == [expected] and expected != old

    for name, content in (("passphrase.key", b"correct horse battery staple!!!\n"),
                          ("b64-passphrase.key", base64.b64encode(b"abcdefghijklmnopqrstuvwxyz012345") + b"\n")):
        p = tmp_path / name
        p.write_bytes(content)
        os.chmod(p, 0o600)
        refused = kekctl("list", "--key-file", str(p), check=1)
        assert "printable text" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_concurrent_kekctl_runs_are_serialised(key_file):
    procs = [subprocess.Popen([KEKCTL, "rotate", "--key-file", key_file], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(12)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    versions = listed(key_file)
    assert len(versions) == 13 and versions[0]["version"] == 13   # no lost update


def test_killed_rotate_leaves_the_old_or_the_new_file(key_file):
    rng = random.Random(1234)
    expected = 1
    for _ in range(60):
        p = subprocess.Popen([KEKCTL, "rotate", "--key-file", key_file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 0.06))   # a rotate takes ~45 ms here: kills land before, during and after the write
        p.send_signal(signal.SIGKILL)
        p.wait()
        count = len(listed(key_file))   # exits 0 only for a complete, valid file
        assert count in (expected, expected + 1)
        expected = count
    kekctl("rotate", "--key-file", key_file, check=0)   # a completed write removes what killed writers left
    assert [n for n in os.listdir(os.path.dirname(key_file)) if ".tmp-" in n] == []


def _wait_for(condition, timeout=6.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_live_rotation_against_a_running_kekd(request):
    """Issue 3's end-to-end proof: encrypt under v1, rotate with no restart, old ciphertexts still decrypt, retire v1
    and its ciphertexts fail with FAILED_PRECONDITION, garbage in the key file never takes effect."""
    import grpc
    try:
        kekd_factory = request.getfixturevalue("kekd_factory")   # Tests/Interop/conftest.py (the lead's)
        pb, pb_grpc = request.getfixturevalue("kms_pb")
    except pytest.FixtureLookupError:
        pytest.skip("needs the kekd_factory and kms_pb fixtures of Tests/Interop/conftest.py")
    k = kekd_factory()
    with grpc.insecure_channel(k.target) as channel:
        stub = pb_grpc.KeyManagementServiceStub(channel)

        def status():
            return stub.Status(pb.StatusRequest(), timeout=5)

        def decrypt(enc):
            return stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="d", key_id=enc.key_id,
                                                  annotations=dict(enc.annotations)), timeout=5).plaintext

        first = status()
        assert first.healthz == "ok" and first.version == "v2"
        dek1 = os.urandom(32)
        enc1 = stub.Encrypt(pb.EncryptRequest(plaintext=dek1, uid="e1"), timeout=5)
        assert enc1.key_id == first.key_id and len(enc1.ciphertext) <= 1024

        out = kekctl("rotate", "--key-file", k.key_file, check=0).stdout
        assert _wait_for(lambda: status().key_id != first.key_id), "Status did not report the new key_id"
        second = status()
        assert second.healthz == "ok" and f"new key_id: {second.key_id}" in out
        dek2 = os.urandom(32)
        enc2 = stub.Encrypt(pb.EncryptRequest(plaintext=dek2, uid="e2"), timeout=5)
        assert enc2.key_id == second.key_id
        assert decrypt(enc1) == dek1 and decrypt(enc2) == dek2

        # --force: kekd's own usage data may already record the decrypt above.
        kekctl("retire", "--key-file", k.key_file, "--key-id", first.key_id, "--force", check=0)

        def v1_refused():
            try:
                decrypt(enc1)
                return False
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                assert "key version 1" in e.details()
                return True
        assert _wait_for(v1_refused), "v1 ciphertexts still decrypt after retire"
        assert status().healthz == "ok" and decrypt(enc2) == dek2

        # Garbage written over the key file: kekd keeps serving with the keys it had and says why.
        with open(k.key_file, "r+b") as f:
            f.write(b"garbage, not a key file")
            f.truncate()
        assert _wait_for(lambda: '"level":"warn"' in k.stderr_text() and "key file" in k.stderr_text())
        after = status()
        assert after.healthz == "ok" and after.key_id == second.key_id
        assert decrypt(stub.Encrypt(pb.EncryptRequest(plaintext=dek1, uid="e3"), timeout=5)) == dek1
        assert k.proc.poll() is None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files and switch uid")


@needs_root
def test_rotate_as_root_keeps_the_files_owner(key_file):
    """kekctl run as root must not leave the key file root-owned: kekd (another uid) could no longer read it."""
    folder = pathlib.Path(key_file).parent
    os.chown(folder, 65534, 65534)
    os.chown(key_file, 65534, 65534)
    kekctl("rotate", "--key-file", key_file, check=0)
    st = os.stat(key_file)
    assert (st.st_uid, st.st_gid) == (65534, 65534) and stat.S_IMODE(st.st_mode) == 0o600
    lock = os.stat(key_file + ".lock")
    assert (lock.st_uid, lock.st_gid) == (65534, 65534)   # the owner's kekctl can still take the lock
    assert [v["state"] for v in listed(key_file)] == ["primary", "active"]


@needs_root
def test_rotate_refuses_when_it_cannot_keep_the_owner():
    """Not root and not able to give the new file the old one's group: refuse, write nothing."""
    import shutil
    import tempfile
    folder = pathlib.Path(tempfile.mkdtemp(prefix="kekd-owner-"))   # /tmp itself, so uid 65534 can reach it
    try:
        os.chmod(folder, 0o755)
        keys = folder / "keys"
        key_file = str(keys / "kek.json")
        kekctl("init", "--key-file", key_file, check=0)
        os.chown(keys, 65534, 65534)
        os.chown(key_file, 65534, 0)   # group root: uid 65534 is not a member
        os.chown(key_file + ".lock", 65534, 65534)
        before = pathlib.Path(key_file).read_bytes()

        def as_nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        proc = subprocess.run([KEKCTL, "rotate", "--key-file", key_file], capture_output=True, text=True, timeout=30,
                              preexec_fn=as_nobody)
        assert proc.returncode == 1, proc.stderr
        assert "could not keep its owner 65534:0" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert pathlib.Path(key_file).read_bytes() == before
        assert [p.name for p in keys.iterdir() if ".tmp-" in p.name] == []
    finally:
        shutil.rmtree(folder)
