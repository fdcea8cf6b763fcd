#!/usr/bin/env python3
"""A small stand-in for HashiCorp Vault, for kekd's tests.

Implements, over TLS with certificates it makes itself, just the endpoints kekd uses, with Vault's JSON shapes,
status codes and {"errors": [...]} bodies:
  GET  /v1/sys/health
  GET  /v1/auth/token/lookup-self          POST /v1/auth/token/renew-self
  POST /v1/auth/<approle-mount>/login      POST /v1/auth/<cert-mount>/login (needs a TLS client certificate)
  GET/POST/DELETE /v1/<transit>/keys/<name>, POST .../keys/<name>/rotate,
  POST .../keys/<name>/config (min_decryption_version: older versions leave the key read's "keys" and their
  ciphertexts are refused with Vault's "disallowed by policy (too old)")
  POST /v1/<transit>/encrypt/<name> (key_version)   POST /v1/<transit>/decrypt/<name> (batch_input)
Real AES-256-GCM behind the transit endpoints (package `cryptography`).

Control endpoints (not counted as Vault requests), under /_fake/:
  GET  /_fake/stats        request counters
  POST /_fake/reset_stats
  POST /_fake/config       {"rules": [{"path": "transit/decrypt", "status": 503, "count": 2, "delay_ms": 0,
                             "drop": false, "rate": 1.0, "abuse": "flood"}],   (count -1 = every request; rate = error rate;
                             abuse: a hostile server's endless answer: "trickle" 1-byte chunks 5 ms apart, "flood" 1-byte
                             chunks as fast as possible, "extensions" 1-byte chunks behind 1000-byte chunk extensions,
                             "continue" endless 100 Continue responses; each chunk its own TLS record; for 30 s at most) "delay_ms": 0, "sealed": false, "chunked": false,
                             "approle_token_ttl": 60, "approle_token_max_ttl": 3600, "cert_token_ttl": 60,
                             "secret_id": "new AppRole secret-id", "silent_close": false}
  POST /_fake/token        {"ttl": 60, "max_ttl": 0, "renewable": true} -> {"token": "..."} (a new token)
  POST /_fake/revoke_all   revokes every token

Usage: fake_vault.py --dir DIR [--port 0] [--transit-mount transit] [--approle-mount approle] [--key NAME]
Prints one JSON line (port, file paths, tokens) on stdout once listening; exits when stdin closes.
"""
import argparse
import base64
import datetime
import json
import os
import random
import secrets
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import ipaddress


def _write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _make_ca(name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_leaf(ca_key, ca_cert, name, server, server_as_client=False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        # etcd's JSON gateway dials etcd itself with the server certificate: it must serve as a client one too.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if server_as_client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_certs(directory, server_as_client=False):
    """CA, server cert (localhost, 127.0.0.1; also for client use with `server_as_client`), client cert, and an
    unrelated CA (with a client cert of its own)."""
    paths = {n: os.path.join(directory, n) for n in
             ["ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other-ca.pem",
              "other-client.pem", "other-client.key"]}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    ca_key, ca_cert = _make_ca("kekd test CA")
    _write_cert(paths["ca.pem"], ca_cert)
    server_key, server_cert = _make_leaf(ca_key, ca_cert, "localhost", server=True, server_as_client=server_as_client)
    _write_cert(paths["server.pem"], server_cert)
    _write_key(paths["server.key"], server_key)
    client_key, client_cert = _make_leaf(ca_key, ca_cert, "kekd-client", server=False)
    _write_cert(paths["client.pem"], client_cert)
    _write_key(paths["client.key"], client_key)
    other_key, other_cert = _make_ca("unrelated CA")
    _write_cert(paths["other-ca.pem"], other_cert)
    # A client certificate the server does not trust (signed by the unrelated CA).
    stranger_key, stranger_cert = _make_leaf(other_key, other_cert, "stranger", server=False)
    _write_cert(paths["other-client.pem"], stranger_cert)
    _write_key(paths["other-client.key"], stranger_key)
    return paths


class VaultState:
    def __init__(self, transit_mount, approle_mount, cert_mount):
        self.lock = threading.Lock()
        self.transit = transit_mount
        self.approle_mount = approle_mount
        self.cert_mount = cert_mount
        self.tokens = {}
        self.keys = {}
        self.clock = 0  # creation times strictly increase so a recreated key never shares one
        self.rules = []
        self.delay_ms = 0
        self.sealed = False
        self.chunked = False
        self.silent_close = False  # close every connection after its response, without "Connection: close"
        self.role_id = "role-" + secrets.token_hex(8)
        self.secret_id = "secret-" + secrets.token_hex(16)
        self.approle_token_ttl = 60
        self.approle_token_max_ttl = 3600
        self.cert_token_ttl = 60
        self.reset_stats()

    def reset_stats(self):
        self.requests = 0
        self.by_op = {}
        self.connections = 0
        self.batch_items = 0
        self.namespaces = set()

    def count(self, op):
        self.requests += 1
        self.by_op[op] = self.by_op.get(op, 0) + 1

    def creation_time(self):
        self.clock = max(self.clock + 1, int(time.time()))
        return self.clock

    def issue_token(self, ttl, max_ttl=0, renewable=True):
        token = "hvs." + secrets.token_urlsafe(24)
        now = time.time()
        self.tokens[token] = {"ttl": ttl, "issued": now, "expires": now + ttl if ttl > 0 else None,
                              "max_expires": now + max_ttl if max_ttl > 0 else None, "renewable": renewable,
                              "revoked": False}
        return token

    def valid(self, token):
        info = self.tokens.get(token or "")
        if not info or info["revoked"]:
            return None
        if info["expires"] is not None and time.time() >= info["expires"]:
            return None
        return info

    def create_key(self, name):
        self.keys[name] = {"versions": {1: (AESGCM.generate_key(bit_length=256), self.creation_time())},
                           "latest": 1, "min_decryption_version": 1}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeVault/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        self.request.do_handshake()  # in this thread, so a slow or failing client never blocks accept()
        super().setup()
        with self.server.state.lock:
            self.server.state.connections += 1

    # --- plumbing -----------------------------------------------------------------------------------------------
    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            value = json.loads(raw)
            return value if isinstance(value, dict) else {}
        except ValueError:
            return None

    def _send(self, status, obj=None):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if self.server.state.chunked and body:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        if self.server.state.silent_close:
            self.close_connection = True

    def _abuse(self, mode):
        """Never finishes the response: a broken or hostile Vault, until the client gives up (or 30 s pass)."""
        self.close_connection = True
        if mode == "continue":
            piece, head = b"HTTP/1.1 100 Continue\r\n\r\n", b""
        else:
            piece = b"1;" + b"e" * 1000 + b"\r\nx\r\n" if mode == "extensions" else b"1\r\nx\r\n"
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        pause = 0.005 if mode == "trickle" else 0
        end = time.time() + 30
        try:
            if head:
                self.wfile.write(head)
            while time.time() < end:
                self.wfile.write(piece)  # unbuffered: one TLS record per piece
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the client gave up: what we wanted

    def _error(self, status, *messages):
        self._send(status, {"errors": list(messages)})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method):
        state = self.server.state
        body = self._body()
        if body is None:
            return self._error(400, "failed to parse JSON input")
        path = self.path.split("?", 1)[0]
        if path.startswith("/_fake/"):
            return self._control(method, path[len("/_fake/"):], body)
        if not path.startswith("/v1/"):
            return self._error(404, "not found")
        path = path[len("/v1/"):]
        with state.lock:
            state.count(self._op(path))
            state.namespaces.add(self.headers.get("X-Vault-Namespace") or "")
            rule = None
            for r in state.rules:
                # count: how many requests the rule hits (-1 = all); rate: probability per request (error rate).
                if r.get("count", 0) != 0 and path.startswith(r.get("path", "")) and random.random() < r.get("rate", 1.0):
                    if r.get("count", 0) > 0:
                        r["count"] -= 1
                    rule = dict(r)
                    break
            delay = state.delay_ms + (rule or {}).get("delay_ms", 0)
        if delay:
            time.sleep(delay / 1000.0)
        if rule and rule.get("abuse"):
            return self._abuse(rule["abuse"])
        if rule and rule.get("drop"):
            self.close_connection = True
            self.connection.close()
            return None
        if rule and rule.get("status"):
            return self._error(rule["status"], rule.get("message", "injected error"))
        if state.sealed and path != "sys/health":
            return self._error(503, "Vault is sealed")
        with state.lock:
            return self._vault(method, path, body)

    @staticmethod
    def _op(path):
        for prefix, name in (("auth/token/lookup-self", "lookup_self"), ("auth/token/renew-self", "renew_self"),
                             ("sys/health", "health")):
            if path.startswith(prefix):
                return name
        if path.endswith("/login"):
            return "login"
        parts = path.split("/")
        if len(parts) >= 3 and parts[-2] in ("encrypt", "decrypt", "keys"):
            return {"keys": "read_key"}.get(parts[-2], parts[-2])
        if path.endswith("/rotate"):
            return "rotate"
        return "other"

    # --- Vault API (called with state.lock held) ---------------------------------------------------------------
    def _vault(self, method, path, body):
        state = self.server.state
        if path == "sys/health":
            code = 503 if state.sealed else 200
            return self._send(code, {"initialized": True, "sealed": state.sealed, "standby": False,
                                     "version": "1.15.0-fake"})
        if path == "auth/%s/login" % state.approle_mount and method == "POST":
            if body.get("role_id") != state.role_id or body.get("secret_id") != state.secret_id:
                return self._error(400, "invalid role or secret ID")
            token = state.issue_token(state.approle_token_ttl, state.approle_token_max_ttl)
            return self._auth_reply(token)
        if path == "auth/%s/login" % state.cert_mount and method == "POST":
            peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            if not peer:
                return self._error(400, "client certificate must be supplied")
            token = state.issue_token(state.cert_token_ttl, 0)
            return self._auth_reply(token)
        token = self.headers.get("X-Vault-Token")
        info = state.valid(token)
        if info is None:
            return self._error(403, "permission denied")
        if path == "auth/token/lookup-self":
            remaining = 0 if info["expires"] is None else max(0, int(info["expires"] - time.time()))
            return self._send(200, {"data": {"ttl": remaining, "renewable": info["renewable"],
                                             "creation_ttl": info["ttl"], "policies": ["kekd"]}})
        if path == "auth/token/renew-self" and method == "POST":
            if not info["renewable"]:
                return self._error(400, "lease is not renewable")
            now = time.time()
            ttl = info["ttl"]
            if info["max_expires"] is not None:
                ttl = max(0, min(ttl, int(info["max_expires"] - now)))
            info["expires"] = now + ttl
            return self._auth_reply(token, ttl=ttl)
        prefix = state.transit + "/"
        if not path.startswith(prefix):
            return self._error(404, "no handler for route")
        parts = path[len(prefix):].split("/")
        if len(parts) < 2:
            return self._error(404, "no handler for route")
        kind, name = parts[0], parts[1]
        if kind == "keys":
            if len(parts) == 3 and parts[2] == "config" and method == "POST":
                key = state.keys.get(name)
                if not key:
                    return self._error(400, "no existing key named %s could be found" % name)
                if "min_decryption_version" in body:
                    wanted = int(body["min_decryption_version"])
                    if wanted > key["latest"]:
                        return self._error(400, "cannot set min decryption version of %d, latest key version is %d"
                                           % (wanted, key["latest"]))
                    key["min_decryption_version"] = max(1, wanted)
                return self._send(204)
            if len(parts) == 3 and parts[2] == "rotate" and method == "POST":
                key = state.keys.get(name)
                if not key:
                    return self._error(400, "encryption key not found")
                key["latest"] += 1
                key["versions"][key["latest"]] = (AESGCM.generate_key(bit_length=256), state.creation_time())
                return self._send(204)
            if method == "POST":
                if name not in state.keys:
                    state.create_key(name)
                return self._send(204)
            if method == "DELETE":
                state.keys.pop(name, None)
                return self._send(204)
            key = state.keys.get(name)
            if not key:
                return self._error(404)
            return self._send(200, {"data": {
                "name": name, "type": "aes256-gcm96", "latest_version": key["latest"],
                "keys": {str(v): t for v, (_, t) in key["versions"].items() if v >= key["min_decryption_version"]},
                "min_decryption_version": key["min_decryption_version"], "min_encryption_version": 0,
                "supports_encryption": True, "supports_decryption": True, "deletion_allowed": True,
                "derived": False, "exportable": False}})
        key = state.keys.get(name)
        if kind == "encrypt" and method == "POST":
            if not key:
                return self._error(400, "encryption key not found")
            version = int(body.get("key_version") or key["latest"])
            if version not in key["versions"]:
                return self._error(400, "invalid key version")
            try:
                plaintext = base64.b64decode(body.get("plaintext", ""), validate=True)
            except ValueError:
                return self._error(400, "failed to base64-decode plaintext")
            nonce = secrets.token_bytes(12)
            sealed = AESGCM(key["versions"][version][0]).encrypt(nonce, plaintext, None)
            return self._send(200, {"data": {"ciphertext": "vault:v%d:%s" % (version, base64.b64encode(nonce + sealed).decode()),
                                             "key_version": version}})
        if kind == "decrypt" and method == "POST":
            if not key:
                return self._error(400, "encryption key not found")
            if "batch_input" in body:
                items = body["batch_input"] if isinstance(body["batch_input"], list) else []
                state.batch_items += len(items)
                results = [self._decrypt_one(key, (i or {}).get("ciphertext", "")) for i in items]
                status = 400 if any("error" in r for r in results) else 200
                return self._send(status, {"data": {"batch_results": results}})
            result = self._decrypt_one(key, body.get("ciphertext", ""))
            if "error" in result:
                return self._error(400, result["error"])
            return self._send(200, {"data": result})
        return self._error(405, "unsupported operation")

    @staticmethod
    def _decrypt_one(key, ciphertext):
        try:
            _, version_text, blob = ciphertext.split(":", 2)
            version = int(version_text[1:])
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            return {"error": "invalid ciphertext"}
        if version not in key["versions"]:
            return {"error": "invalid key version"}
        if version < key["min_decryption_version"]:
            return {"error": "ciphertext or signature version is disallowed by policy (too old)"}
        try:
            plaintext = AESGCM(key["versions"][version][0]).decrypt(raw[:12], raw[12:], None)
        except Exception:  # noqa: BLE001 - any failure is "message authentication failed" in Vault
            return {"error": "cipher: message authentication failed"}
        return {"plaintext": base64.b64encode(plaintext).decode()}

    def _auth_reply(self, token, ttl=None):
        info = self.server.state.tokens[token]
        return self._send(200, {"auth": {"client_token": token, "accessor": "acc-" + token[-6:],
                                         "lease_duration": info["ttl"] if ttl is None else ttl,
                                         "renewable": info["renewable"], "policies": ["kekd"]}})

    # --- control ------------------------------------------------------------------------------------------------
    def _control(self, method, what, body):
        state = self.server.state
        with state.lock:
            if what == "stats":
                return self._send(200, {"requests": state.requests, "by_op": state.by_op,
                                        "connections": state.connections, "batch_items": state.batch_items,
                                        "namespaces": sorted(state.namespaces)})
            if what == "reset_stats":
                state.reset_stats()
                return self._send(200, {})
            if what == "config":
                for name in ("delay_ms", "sealed", "chunked", "silent_close", "approle_token_ttl", "approle_token_max_ttl",
                             "cert_token_ttl", "secret_id"):
                    if name in body:
                        setattr(state, name, body[name])
                if "rules" in body:
                    state.rules = [dict(r) for r in body["rules"]]
                return self._send(200, {})
            if what == "token":
                token = state.issue_token(int(body.get("ttl", 60)), int(body.get("max_ttl", 0)),
                                          bool(body.get("renewable", True)))
                return self._send(200, {"token": token})
            if what == "revoke_all":
                for info in state.tokens.values():
                    info["revoked"] = True
                return self._send(200, {})
        return self._error(404, "unknown control endpoint")


class FakeVaultProcess:
    """Runs this script as a subprocess, for pytest files and the benchmark:

        with FakeVaultProcess(tmp_dir) as vault:
            flags = vault.kekd_flags()          # --vault-* flags for `kekd serve --backend vault`
            vault.control("config", {"delay_ms": 5})
            print(vault.stats()["requests"])
    """

    def __init__(self, directory, *extra_args, python=sys.executable):
        import subprocess
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--dir", str(directory), *extra_args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("fake_vault.py exited before printing its address")
        self.info = json.loads(line)
        self._ssl = ssl.create_default_context(cafile=self.info["ca_pem"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - make sure it is gone
                self.proc.kill()

    def control(self, what, body=None):
        import http.client
        conn = http.client.HTTPSConnection("127.0.0.1", self.info["port"], context=self._ssl, timeout=10)
        conn.request("POST", "/_fake/" + what, body=json.dumps(body or {}), headers={"Content-Type": "application/json"})
        reply = conn.getresponse().read()
        conn.close()
        return json.loads(reply or b"{}")

    def stats(self):
        return self.control("stats")

    def admin(self, method, path, body=None):
        """A Vault API call with a fresh non-expiring token, as an operator would make it (e.g. a key rotation)."""
        import http.client
        token = self.control("token", {"ttl": 0})["token"]
        conn = http.client.HTTPSConnection("127.0.0.1", self.info["port"], context=self._ssl, timeout=10)
        headers = {"X-Vault-Token": token}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, "/v1/" + path, body=None if body is None else json.dumps(body), headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    def kekd_flags(self, auth="token"):
        flags = ["--vault-addr", self.info["addr"], "--vault-key", self.info["key"], "--vault-ca-file", self.info["ca_pem"]]
        if auth == "token":
            return flags + ["--vault-token-file", self.info["token_file"]]
        if auth == "approle":
            return flags + ["--vault-approle-role-id-file", self.info["role_id_file"],
                            "--vault-approle-secret-id-file", self.info["secret_id_file"]]
        return flags + ["--vault-auth", "cert", "--vault-client-cert", self.info["client_pem"],
                        "--vault-client-key", self.info["client_key"]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--transit-mount", default="transit")
    parser.add_argument("--approle-mount", default="approle")
    parser.add_argument("--cert-mount", default="cert")
    parser.add_argument("--key", default="kekd")
    parser.add_argument("--token-ttl", type=int, default=0, help="TTL of the token written to token.txt (0 = none)")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    paths = make_certs(args.dir)
    state = VaultState(args.transit_mount, args.approle_mount, args.cert_mount)
    state.create_key(args.key)
    token = state.issue_token(args.token_ttl, 0, renewable=args.token_ttl > 0)
    files = {"token": os.path.join(args.dir, "token.txt"), "role_id": os.path.join(args.dir, "role-id.txt"),
             "secret_id": os.path.join(args.dir, "secret-id.txt")}
    for name, value in (("token", token), ("role_id", state.role_id), ("secret_id", state.secret_id)):
        with open(files[name], "w") as f:
            f.write(value + "\n")
        os.chmod(files[name], 0o600)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["server.pem"], paths["server.key"])
    context.load_verify_locations(paths["ca.pem"])
    context.verify_mode = ssl.CERT_OPTIONAL

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

        def handle_error(self, request, client_address):
            pass  # refused handshakes are what several tests provoke on purpose

        def get_request(self):
            sock, addr = super().get_request()
            return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    httpd = Server(("127.0.0.1", args.port), Handler)
    httpd.state = state
    info = {"port": httpd.server_address[1], "addr": "https://127.0.0.1:%d" % httpd.server_address[1],
            "localhost_addr": "https://localhost:%d" % httpd.server_address[1], "key": args.key}
    info.update({k.replace(".", "_").replace("-", "_"): v for k, v in paths.items()})
    info.update({k + "_file": v for k, v in files.items()})
    print(json.dumps(info), flush=True)

    def watch_stdin():
        try:
            while sys.stdin.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
