"""No Vault decrypt storm after a restart (issue 13, section 3): kekd keeps a record of the wrapped local KEKs it issued
or unwrapped (STATE_DIR/vault-keks.json, wrapped form and metadata only, mode 0600) and at start unwraps the most
recent ones with one batched Vault call. Counted with fake_vault.py's request counters: after a restart with the
record, decrypting data under many local KEKs costs at most a couple of Vault decrypt requests; without it (deleted,
corrupted) kekd starts cold, one request per local KEK, and never fails to start."""
import json
import os
import stat

import pytest

from fake_vault import FakeVaultProcess
from test_vault_backend import KEY_ANNOTATION, Client, wait_ready
from test_multi_backend import write_seeds


@pytest.fixture
def vault(tmp_path):
    with FakeVaultProcess(tmp_path / "vault") as v:
        yield v


def start(kekd_factory, kms_pb, vault, *extra):
    k = kekd_factory(extra=["--backend", "vault", *vault.kekd_flags(), *extra], subdir="node", init_key=False)
    c = Client(k, kms_pb)
    wait_ready(c)
    return k, c


def decrypt_counting(vault, c, envelopes):
    """Decrypts every envelope one after another; returns the plaintexts and the Vault decrypt requests made."""
    before = vault.stats()["by_op"].get("decrypt", 0)
    plaintexts = [c.decrypt(e) for e in envelopes]
    return plaintexts, vault.stats()["by_op"].get("decrypt", 0) - before


def test_a_restart_with_the_record_costs_a_few_vault_requests_a_lost_record_a_cold_start(kekd_factory, kms_pb, vault):
    k, c = start(kekd_factory, kms_pb, vault, "--vault-local-kek-max-encryptions", "3")
    seeds, envelopes = write_seeds(c, 30)
    local_keks = {e.annotations[KEY_ANNOTATION] for e in envelopes}
    assert len(local_keks) >= 8
    c.close()
    assert k.stop() == 0

    record_path = k.dir / "vault-keks.json"
    assert stat.S_IMODE(os.stat(record_path).st_mode) == 0o600
    record = json.loads(record_path.read_text())
    assert record["format"] == "kekd-issued-keks-v1"
    assert {e["wrapped"].encode() for e in record["keks"]} >= local_keks
    assert all(set(e) == {"wrapped", "key_version", "created", "last_used"} for e in record["keks"])
    raw = record_path.read_bytes()
    assert not any(s in raw or s.hex().encode() in raw for s in seeds)

    # Warm: the record's local KEKs come back with one batched call at start.
    vault.control("reset_stats")
    k, c = start(kekd_factory, kms_pb, vault)
    plaintexts, during = decrypt_counting(vault, c, envelopes)
    assert plaintexts == seeds
    warm_total = vault.stats()["by_op"].get("decrypt", 0)
    print(f"warm restart: {warm_total} Vault decrypt requests for {len(local_keks)} local KEKs ({during} during the decrypts)")
    assert during == 0
    assert 1 <= warm_total <= 2
    assert "warmed" in k.stderr_text()
    c.close()
    k.stop()

    # Deleted record: a cold start, one Vault request per local KEK (sequential decrypts cannot batch).
    os.unlink(record_path)
    vault.control("reset_stats")
    k, c = start(kekd_factory, kms_pb, vault)
    plaintexts, cold = decrypt_counting(vault, c, envelopes)
    assert plaintexts == seeds
    assert cold >= len(local_keks) - 1
    c.close()
    k.stop()

    # Corrupted record: one warning line, a cold start, never a failed one; the next save replaces it.
    record_path.write_bytes(b'{"format": "kekd-issued-keks-v1", "keks": [{"wrapped": ')
    vault.control("reset_stats")
    k, c = start(kekd_factory, kms_pb, vault)
    plaintexts, cold = decrypt_counting(vault, c, envelopes)
    assert plaintexts == seeds
    assert cold >= len(local_keks) - 1
    warnings = [line for line in k.stderr_text().splitlines() if "ignoring the record of issued local KEKs" in line]
    assert len(warnings) == 1, k.stderr_text()
    c.close()
    assert k.stop() == 0
    assert json.loads(record_path.read_text())["format"] == "kekd-issued-keks-v1"


def test_a_record_of_another_vault_key_is_ignored(kekd_factory, kms_pb, vault, tmp_path):
    k, c = start(kekd_factory, kms_pb, vault)
    write_seeds(c, 3)
    c.close()
    k.stop()
    record_path = k.dir / "vault-keks.json"
    record = json.loads(record_path.read_text())
    record["owner"] = "vault-" + "0" * 32
    record_path.write_text(json.dumps(record))
    vault.control("reset_stats")
    k, c = start(kekd_factory, kms_pb, vault)
    assert vault.stats()["by_op"].get("decrypt", 0) == 0  # nothing foreign was sent to Vault
    assert "belongs to another key" in k.stderr_text()
    c.close()
