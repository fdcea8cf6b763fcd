"""kekd --backend vault, driven through the built binary and gRPC against fake_vault.py over TLS: each auth method,
Status and Encrypt cost no Vault requests, a cold decrypt storm is batched, a Vault key rotation changes key_id
without a restart while old ciphertexts still decrypt, and a Vault outage leaves Encrypt and cached Decrypt working
while uncached Decrypts fail fast with UNAVAILABLE until Vault returns."""
import concurrent.futures
import contextlib
import os
import secrets
import time

import grpc
import pytest

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
    err = p.stderr.strip().splitlines()[-1]   # after the Vault backend's JSON log lines: the one-line reason
    assert p.returncode == 5 and err.startswith("kekd: audit chain key") and "audit-hmac.key is missing" in err, err
    assert "--audit-new-chain" in err and not chain_key.exists()

    k2 = kekd_factory(extra=[*vault_flags, "--audit-new-chain"], init_key=False, subdir="v")
    c = Client(k2, kms_pb)
    wait_ready(c)
    c.close()
    assert k2.stop() == 0
    assert chain_key.exists() and os.path.exists(k.audit + ".1")
    assert '"op":"AuditNewChain"' in open(k.audit).readline()
