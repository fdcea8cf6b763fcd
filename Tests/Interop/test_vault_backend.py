"""kekd --backend vault, driven through the built binary and gRPC against fake_vault.py over TLS: each auth method,
Status and Encrypt cost no Vault requests, a cold decrypt storm is batched, a Vault key rotation changes key_id
without a restart while old ciphertexts still decrypt, and a Vault outage leaves Encrypt and cached Decrypt working
while uncached Decrypts fail fast with UNAVAILABLE until Vault returns."""
import concurrent.futures
import contextlib
import os
import secrets
import subprocess
import time

import grpc
import pytest

from conftest import KEKD, SANITIZED, free_port
from fake_vault import FakeVaultProcess

KEY_ANNOTATION = "local-kek.kekd.io"


@pytest.fixture
def vault(tmp_path):
    with FakeVaultProcess(tmp_path / "vault") as v:
        yield v


def start_vault_kekd(kekd_factory, vault, tmp_path, *extra, auth="token"):
    key_file = tmp_path / f"audit-hmac-{secrets.token_hex(4)}.key"
    key_file.write_text(secrets.token_hex(32))
    os.chmod(key_file, 0o600)
    return kekd_factory(extra=["--backend", "vault", "--audit-hmac-key-file", str(key_file), *vault.kekd_flags(auth), *extra],
                        init_key=False)


class Client:
    def __init__(self, kekd, kms_pb):
        self.pb, grpc_pb = kms_pb
        self.channel = grpc.insecure_channel(kekd.target)
        self.stub = grpc_pb.KeyManagementServiceStub(self.channel)

    def status(self):
        return self.stub.Status(self.pb.StatusRequest(), timeout=3)

    def encrypt(self, plaintext):
        return self.stub.Encrypt(self.pb.EncryptRequest(plaintext=plaintext, uid=secrets.token_hex(8)), timeout=3)

    def decrypt(self, enc):
        return self.stub.Decrypt(self.pb.DecryptRequest(ciphertext=enc.ciphertext, key_id=enc.key_id, uid=secrets.token_hex(8),
                                                        annotations=dict(enc.annotations)), timeout=3).plaintext

    def close(self):
        self.channel.close()


@contextlib.contextmanager
def vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, *extra, auth="token"):
    """A kekd on the fake Vault, a gRPC client for it, and the Status it reported once healthy."""
    c = Client(start_vault_kekd(kekd_factory, vault, tmp_path, *extra, auth=auth), kms_pb)
    try:
        yield c, wait_ready(c)
    finally:
        c.close()


def wait_ready(client, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = client.status()
        if s.healthz == "ok" and s.key_id:
            return s
        time.sleep(0.05)
    raise AssertionError(f"kekd never became healthy: {client.status().healthz}")


@pytest.mark.parametrize("auth", ["token", "approle", "cert"])
def test_round_trip_with_each_auth_method(kekd_factory, kms_pb, vault, tmp_path, auth):
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, auth=auth) as (c, status):
        seed = secrets.token_bytes(32)
        enc = c.encrypt(seed)
        assert enc.key_id == status.key_id
        assert list(enc.annotations) == [KEY_ANNOTATION] and enc.annotations[KEY_ANNOTATION].startswith(b"vault:v1:")
        assert len(enc.ciphertext) <= 1024
        assert c.decrypt(enc) == seed


def test_status_and_encrypt_make_no_vault_requests(kekd_factory, kms_pb, vault, tmp_path):
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path) as (c, _):
        vault.control("reset_stats")
        for _ in range(1000):
            assert c.status().healthz == "ok"
        for _ in range(200):
            c.encrypt(secrets.token_bytes(32))
        assert vault.stats()["requests"] == 0


def test_cold_decrypt_storm_costs_a_few_vault_requests(kekd_factory, kms_pb, vault, tmp_path):
    # The writer renews its local KEK after every Encrypt, so 50 Encrypts leave 50 distinct wrapped local KEKs.
    envelopes = []
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-local-kek-max-encryptions", "1") as (w, _):
        seen = set()
        while len(envelopes) < 50:
            enc = w.encrypt(secrets.token_bytes(32))
            if enc.annotations[KEY_ANNOTATION] not in seen:
                seen.add(enc.annotations[KEY_ANNOTATION])
                envelopes.append(enc)
            else:
                time.sleep(0.01)
        plaintexts = [w.decrypt(e) for e in envelopes]
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path) as (r, _):
        vault.control("reset_stats")
        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            results = list(pool.map(lambda i: r.decrypt(envelopes[i % 50]) == plaintexts[i % 50], range(2000)))
        stats = vault.stats()
        print(f"2000 Decrypts of 50 cold local KEKs through kekd: {stats['requests']} Vault requests {stats['by_op']}")
        assert all(results)
        assert 1 <= stats["by_op"].get("decrypt", 0) <= 25


def test_vault_rotation_changes_key_id_without_restart(kekd_factory, kms_pb, vault, tmp_path):
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-key-poll-interval", "200ms") as (c, status):
        before = status.key_id
        old_seed = secrets.token_bytes(32)
        old = c.encrypt(old_seed)
        vault.admin("POST", "transit/keys/kekd/rotate")
        deadline = time.time() + 10
        while c.status().key_id == before and time.time() < deadline:
            time.sleep(0.05)
        after = c.status().key_id
        assert after != before
        new = c.encrypt(b"n" * 32)
        assert new.key_id == after and new.annotations[KEY_ANNOTATION].startswith(b"vault:v2:")
        assert c.decrypt(old) == old_seed
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path) as (cold, _):
        assert cold.decrypt(old) == old_seed


def test_vault_outage_keeps_encrypt_and_cached_decrypt_working(kekd_factory, kms_pb, vault, tmp_path):
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-local-kek-max-encryptions", "1") as (o, _):
        foreign = [o.encrypt(bytes([1]) * 32)]
        time.sleep(0.3)
        foreign.append(o.encrypt(bytes([9]) * 32))
        assert foreign[0].annotations != foreign[1].annotations
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-request-timeout", "1s") as (c, status):
        key_id = status.key_id
        own = c.encrypt(b"o" * 32)
        vault.control("config", {"delay_ms": 5000})  # Vault hangs
        with pytest.raises(grpc.RpcError) as first:
            c.decrypt(foreign[0])
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE
        started = time.time()
        with pytest.raises(grpc.RpcError) as second:
            c.decrypt(foreign[1])
        assert second.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.time() - started < 0.5, "the second uncached Decrypt fails fast"
        assert c.encrypt(b"e" * 32).key_id == key_id
        assert c.decrypt(own) == b"o" * 32
        status = c.status()
        assert status.healthz == "ok" and status.key_id == key_id
        vault.control("config", {"delay_ms": 0})
        deadline = time.time() + 15
        while True:
            try:
                assert c.decrypt(foreign[1]) == bytes([9]) * 32
                break
            except grpc.RpcError:
                assert time.time() < deadline, "kekd did not recover after Vault returned"
                time.sleep(0.2)


@pytest.mark.parametrize("flag", ["--vault-token-file", "--vault-approle-secret-id-file", "--vault-client-key"])
def test_credential_file_readable_by_others_is_refused_with_exit_6(vault, tmp_path, flag):
    """Issue 15 item 11: Vault credential files get the key file's mode rule; the one-line reason names the file and
    never its contents."""
    source = {"--vault-token-file": "token_file", "--vault-approle-secret-id-file": "secret_id_file",
              "--vault-client-key": "client_key"}[flag]
    content = open(vault.info[source]).read()
    exposed = tmp_path / "exposed-credential"
    exposed.write_text(content)
    os.chmod(exposed, 0o644)
    auth = {"--vault-token-file": "token", "--vault-approle-secret-id-file": "approle", "--vault-client-key": "cert"}[flag]
    flags = vault.kekd_flags(auth)
    flags[flags.index(flag) + 1] = str(exposed)
    state = tmp_path / "state"
    state.mkdir()
    audit_key = tmp_path / "audit-hmac.key"
    audit_key.write_text(secrets.token_hex(32))
    os.chmod(audit_key, 0o600)
    r = subprocess.run([str(KEKD), "serve", "--backend", "vault", "--listen", f"unix://{state}/kekd.sock",
                        "--state-dir", str(state), "--audit-log", str(state / "audit.log"), "--audit-hmac-key-file", str(audit_key),
                        "--health-addr", f"127.0.0.1:{free_port()}", *flags], capture_output=True, text=True, timeout=30)
    assert r.returncode == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(exposed) in lines[0] and "0644" in lines[0] and "chmod 600" in lines[0], lines[0]
    secret = content.strip().splitlines()[-2 if source == "client_key" else -1]  # a line of the secret itself
    assert secret not in r.stderr and secret not in r.stdout


def test_tampered_or_foreign_ciphertext_is_invalid_argument(kekd_factory, kms_pb, vault, tmp_path):
    """Issue 11 item 7: the Vault backend answers a tampered or foreign envelope as the file backend does."""
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path) as (c, _):
        enc = c.encrypt(b"s" * 32)
        other = c.encrypt(b"t" * 32)
        flipped = kms_pb[0].EncryptResponse(ciphertext=enc.ciphertext[:-1] + bytes([enc.ciphertext[-1] ^ 1]),
                                            key_id=enc.key_id, annotations=dict(enc.annotations))
        swapped = kms_pb[0].EncryptResponse(ciphertext=enc.ciphertext[:13] + other.ciphertext[13:], key_id=enc.key_id,
                                            annotations=dict(enc.annotations))
        for bad in (flipped, swapped):
            with pytest.raises(grpc.RpcError) as err:
                c.decrypt(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert c.decrypt(enc) == b"s" * 32


def wait_for_rpc_error(call, timeout=10):
    """The gRPC error `call` raises once it starts failing (within `timeout` seconds)."""
    deadline = time.time() + timeout
    while True:
        try:
            call()
        except grpc.RpcError as e:
            return e
        assert time.time() < deadline, "the call kept succeeding"
        time.sleep(0.05)


def test_revoked_kekd_stops_status_encrypt_and_decrypt(kekd_factory, kms_pb, vault, tmp_path):
    """Issue 15 item 3: after the Transit key is deleted and every token revoked, Status fails at the gRPC level and
    neither an uncached nor a cached local KEK decrypts any more."""
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path) as (o, _):
        uncached = o.encrypt(b"u" * 32)
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-key-poll-interval", "200ms",
                           "--vault-cache-ttl", "1h") as (c, _):
        cached = c.encrypt(b"c" * 32)
        assert c.decrypt(cached) == b"c" * 32
        assert vault.admin("DELETE", "transit/keys/kekd") == 204
        vault.control("revoke_all")
        err = wait_for_rpc_error(c.status)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        for enc in (cached, uncached):
            with pytest.raises(grpc.RpcError) as e:
                c.decrypt(enc)
            assert e.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION), e.value.details()
        with pytest.raises(grpc.RpcError):
            c.encrypt(b"x" * 32)


def test_cached_local_kek_expires_after_cache_ttl(kekd_factory, kms_pb, vault, tmp_path):
    """With no key poll to notice, a revoked kekd decrypts with a cached local KEK for at most --vault-cache-ttl."""
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-key-poll-interval", "1h",
                           "--vault-cache-ttl", "1s") as (c, _):
        enc = c.encrypt(b"t" * 32)
        vault.control("revoke_all")
        assert c.decrypt(enc) == b"t" * 32
        time.sleep(1.1)
        with pytest.raises(grpc.RpcError) as e:
            c.decrypt(enc)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
        assert wait_for_rpc_error(c.status).code() == grpc.StatusCode.UNAVAILABLE


def test_min_decryption_version_is_failed_precondition(kekd_factory, kms_pb, vault, tmp_path):
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path, "--vault-key-poll-interval", "200ms") as (c, status):
        old = c.encrypt(b"1" * 32)
        assert c.decrypt(old) == b"1" * 32
        vault.admin("POST", "transit/keys/kekd/rotate")
        deadline = time.time() + 10
        while c.status().key_id == status.key_id:
            assert time.time() < deadline
            time.sleep(0.05)
        new = c.encrypt(b"2" * 32)
        assert vault.admin("POST", "transit/keys/kekd/config", {"min_decryption_version": 2}) == 204
        # Until kekd's key poll sees the new minimum, Vault itself refuses the old version (also FAILED_PRECONDITION);
        # from then on kekd refuses it before asking Vault, naming the minimum.
        deadline = time.time() + 10
        while True:
            err = wait_for_rpc_error(lambda: c.decrypt(old))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            if "min_decryption_version 2" in err.details():
                break
            assert time.time() < deadline, err.details()
            time.sleep(0.1)
        assert c.decrypt(new) == b"2" * 32
        assert c.status().healthz == "ok"


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@pytest.mark.parametrize("abuse", ["flood", "extensions"])
def test_hostile_vault_cannot_pin_a_core(kekd_factory, kms_pb, vault, tmp_path, abuse):
    """Issue 15 item 10: a Vault that floods tiny chunks or sends an endless body costs kekd a failed Decrypt within
    its deadline and little CPU."""
    with vault_kekd_client(kekd_factory, kms_pb, vault, tmp_path) as (o, _):
        foreign = o.encrypt(b"f" * 32)
    kekd = start_vault_kekd(kekd_factory, vault, tmp_path, "--vault-request-timeout", "2s")
    c = Client(kekd, kms_pb)
    try:
        wait_ready(c)
        vault.control("config", {"rules": [{"path": "transit/decrypt", "abuse": abuse, "count": -1}]})
        cpu, started = cpu_seconds(kekd.proc.pid), time.time()
        with pytest.raises(grpc.RpcError) as e:
            c.decrypt(foreign)
        elapsed, used = time.time() - started, cpu_seconds(kekd.proc.pid) - cpu
        print(f"{abuse}: {e.value.code()} after {elapsed:.2f} s, kekd CPU {used:.2f} s")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert elapsed < 2.9 and used < (4.5 if SANITIZED else 1.5)
        assert c.status().healthz == "ok", "a broken Vault response is an outage, not a revocation"
    finally:
        c.close()


def test_deleted_chain_key_in_the_state_folder_stops_kekd(kekd_factory, kms_pb, vault):
    """The Vault backend keeps its random audit chain key in STATE_DIR/audit-hmac.key. Deleted while audit records
    exist, kekd must not silently make a new key and chain (the old logs could never be verified again): exit 5 with
    one line; --audit-new-chain accepts a new chain."""
    import subprocess
    from conftest import KEKD

    vault_flags = ["--backend", "vault", *vault.kekd_flags("token")]
    k = kekd_factory(extra=vault_flags, init_key=False, subdir="v")
    c = Client(k, kms_pb)
    wait_ready(c)
    c.close()
    assert k.stop() == 0
    chain_key = k.dir / "audit-hmac.key"
    assert chain_key.exists() and os.path.getsize(k.audit) > 0
    chain_key.unlink()

    args = [str(KEKD), "serve", "--listen", f"unix://{k.dir}/kekd2.sock", "--state-dir", str(k.dir),
            "--audit-log", k.audit, "--health-addr", "off", *vault_flags]
    p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    # The one-line reason, among the Vault backend's JSON log lines (its thread may log after it).
    reasons = [line for line in p.stderr.splitlines() if line.startswith("kekd: ")]
    assert len(reasons) == 1, p.stderr
    err = reasons[0]
    assert p.returncode == 5 and err.startswith("kekd: audit chain key") and "audit-hmac.key is missing" in err, err
    assert "--audit-new-chain" in err and not chain_key.exists()

    k2 = kekd_factory(extra=[*vault_flags, "--audit-new-chain"], init_key=False, subdir="v")
    c = Client(k2, kms_pb)
    wait_ready(c)
    c.close()
    assert k2.stop() == 0
    assert chain_key.exists() and os.path.exists(k.audit + ".1")
    assert '"op":"AuditNewChain"' in open(k.audit).readline()
