"""Several backends in one kekd (issue 13, section 2), through the built binary, grpcio and fake_vault.py: data written
under the file backend still decrypts after kekd is restarted with Vault encrypting and the file backend decrypt-only
(and the reverse), routed by key_id without asking the other backend; a ciphertext of a backend kekd does not have is
FAILED_PRECONDITION naming it; /readyz, metrics and the audit log show each backend; a decrypt-only Vault backend
never asks Vault to encrypt. Also the flag rules of --decrypt-also."""
import json
import os
import secrets
import subprocess

import grpc
import pytest

from conftest import KEKD
from fake_vault import FakeVaultProcess
from test_kekd_lifecycle import http_get
from test_vault_backend import Client, wait_ready

FILE_PREFIX = "kekd-v"
VAULT_PREFIX = "kekd-vault-"


@pytest.fixture
def vault(tmp_path):
    with FakeVaultProcess(tmp_path / "vault") as v:
        yield v


def decrypt_only_vault_flags(vault):
    return ["--decrypt-also", "vault", *[("--decrypt-also-" + f[2:]) if f.startswith("--") else f for f in vault.kekd_flags()]]


def write_seeds(client, n):
    seeds = [secrets.token_bytes(32) for _ in range(n)]
    return seeds, [client.encrypt(s) for s in seeds]


def audit_records(k):
    with open(k.audit) as f:
        return [json.loads(line) for line in f if line.strip()]


def expect_failed_precondition(client, enc, kind):
    with pytest.raises(grpc.RpcError) as err:
        client.decrypt(enc)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert f"belongs to the {kind} backend, which this kekd does not have" in err.value.details()


def test_file_to_vault_old_ciphertexts_decrypt_new_ones_carry_the_vault_key_id(kekd_factory, kms_pb, vault):
    old_node = kekd_factory()
    c = Client(old_node, kms_pb)
    seeds, old = write_seeds(c, 20)
    assert all(e.key_id.startswith(FILE_PREFIX) for e in old)
    c.close()
    old_node.stop()

    # The migration restart: Vault encrypts, the old key file only decrypts. Its own state folder holds the Vault
    # backend's audit chain key (the file backend's derived one would not follow a new encrypting backend).
    new_node = kekd_factory(extra=["--backend", "vault", *vault.kekd_flags(),
                                   "--decrypt-also", "file", "--decrypt-also-key-file", old_node.key_file], init_key=False)
    c = Client(new_node, kms_pb)
    status = wait_ready(c)
    assert status.key_id.startswith(VAULT_PREFIX)
    vault.control("reset_stats")
    assert [c.decrypt(e) for e in old] == seeds
    assert vault.stats()["by_op"].get("decrypt", 0) == 0  # routed to the file backend, Vault never asked
    new_seeds, new = write_seeds(c, 5)
    assert all(e.key_id == status.key_id for e in new)
    assert [c.decrypt(e) for e in new] == new_seeds

    code, ready = http_get(new_node.health_port, "/readyz?verbose")
    assert code == 200, ready
    assert "key-backend-decrypt-only-file" in ready and "key-file" in ready
    _, metrics = http_get(new_node.health_port, "/metrics")
    assert 'kekd_backend_up{backend="vault",role="encrypt"} 1' in metrics
    assert 'kekd_backend_up{backend="file",role="decrypt-only"} 1' in metrics
    c.close()
    new_node.stop()
    records = [r for r in audit_records(new_node) if r["op"] in ("Encrypt", "Decrypt") and r["outcome"] == "OK"]
    served = {(r["op"], r["key_id"].startswith(FILE_PREFIX) and not r["key_id"].startswith(VAULT_PREFIX), r["backend"]) for r in records}
    assert served == {("Decrypt", True, "file"), ("Decrypt", False, "vault"), ("Encrypt", False, "vault")}, served
    assert "decrypt_also" in new_node.stderr_text()


def test_a_ciphertext_of_a_backend_kekd_does_not_have_is_failed_precondition(kekd_factory, kms_pb, vault):
    file_node = kekd_factory()
    fc = Client(file_node, kms_pb)
    file_enc = fc.encrypt(b"f" * 32)
    vault_node = kekd_factory(extra=["--backend", "vault", *vault.kekd_flags()], init_key=False)
    vc = Client(vault_node, kms_pb)
    wait_ready(vc)
    vault_enc = vc.encrypt(b"v" * 32)
    vault.control("reset_stats")
    expect_failed_precondition(fc, vault_enc, "vault")
    expect_failed_precondition(vc, file_enc, "file")
    assert vault.stats()["by_op"].get("decrypt", 0) == 0
    # A key_id no kekd backend issues stays INVALID_ARGUMENT, as before.
    foreign = kms_pb[0].DecryptRequest(ciphertext=file_enc.ciphertext, key_id="other-plugin-key", uid="u",
                                       annotations=dict(file_enc.annotations))
    with pytest.raises(grpc.RpcError) as err:
        fc.stub.Decrypt(foreign, timeout=3)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fc.close()
    vc.close()


def test_vault_to_file_and_a_decrypt_only_vault_never_encrypts(kekd_factory, kms_pb, vault):
    old_node = kekd_factory(extra=["--backend", "vault", *vault.kekd_flags()], init_key=False)
    c = Client(old_node, kms_pb)
    wait_ready(c)
    seeds, old = write_seeds(c, 10)
    assert all(e.key_id.startswith(VAULT_PREFIX) for e in old)
    c.close()
    old_node.stop()

    # The decrypt-only Vault backend needs no permission to encrypt: Vault refuses every encrypt from now on.
    vault.control("config", {"rules": [{"path": "transit/encrypt", "status": 403, "count": -1}]})
    vault.control("reset_stats")
    new_node = kekd_factory(extra=decrypt_only_vault_flags(vault))
    c = Client(new_node, kms_pb)
    status = c.status()
    assert status.healthz == "ok" and status.key_id.startswith(FILE_PREFIX)
    assert [c.decrypt(e) for e in old] == seeds
    new_seeds, new = write_seeds(c, 5)
    assert all(e.key_id == status.key_id for e in new)
    assert [c.decrypt(e) for e in new] == new_seeds
    code, ready = http_get(new_node.health_port, "/readyz?verbose")
    assert code == 200 and "key-backend-decrypt-only-vault" in ready, ready
    _, metrics = http_get(new_node.health_port, "/metrics")
    assert 'kekd_backend_up{backend="vault",role="decrypt-only"} 1' in metrics
    c.close()
    new_node.stop()
    stats = vault.stats()
    assert stats["by_op"].get("encrypt", 0) == 0, stats
    assert 1 <= stats["by_op"].get("decrypt", 0) <= 3, stats
    assert "forbidden" not in new_node.stderr_text().lower()


@pytest.mark.parametrize("args, message", [
    (["--decrypt-also", "file"], "already the encrypting backend"),
    (["--decrypt-also", "tape"], "--decrypt-also must be one of"),
    (["--decrypt-also-key-file", "/nonexistent/kek.json"], "--decrypt-also-key-file needs --decrypt-also file"),
    (["--backend", "vault", "--decrypt-also", "file", "--decrypt-also", "file"], "given twice"),
    (["--decrypt-also-bogus", "1"], "unknown flag --decrypt-also-bogus"),
    (["--decrypt-also"], "--decrypt-also needs a value"),
])
def test_decrypt_also_flag_errors_are_usage_errors(tmp_path, args, message):
    out = subprocess.run([str(KEKD), "serve", "--listen", f"unix://{tmp_path}/s.sock", "--state-dir", str(tmp_path),
                          "--health-addr", "off", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_missing_decrypt_only_key_file_is_exit_3(tmp_path, vault):
    out = subprocess.run([str(KEKD), "serve", "--listen", f"unix://{tmp_path}/s.sock", "--state-dir", str(tmp_path),
                          "--health-addr", "off", "--backend", "vault", *vault.kekd_flags(), "--decrypt-also", "file",
                          "--decrypt-also-key-file", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 3, out.stderr
    assert "decrypt-only file backend" in out.stderr
    assert not os.path.exists(tmp_path / "missing.json")
