#!/usr/bin/env python3
"""Writes the vault-http fuzz seeds to Tests/Fuzz/corpus/vault-http/.

Captured: the raw bytes Tests/Interop/fake_vault.py (Vault's endpoints, JSON shapes, status codes and
{"errors": [...]} bodies, over TLS) sends back for the requests kekd's Vault client makes, with Content-Length and
with chunked bodies, keep-alive and pipelined. Hand-written: shapes Vault's Go net/http server also produces (a
307 to the active node, 100 Continue, a body delimited by close, chunk extensions and trailers, HTTP/1.0).
Each seed is the harness's configuration octet (bit 0: at EOF, bit 1: HEAD) followed by the bytes.

Usage: /work/.venv-shared/bin/python Tests/Fuzz/vault-http/capture_seeds.py
"""
import json
import os
import socket
import ssl
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "Interop"))
from fake_vault import FakeVaultProcess  # noqa: E402

OUT = os.path.join(ROOT, "Tests", "Fuzz", "corpus", "vault-http")


def save(name, data, at_eof=False, head=False):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([(1 if at_eof else 0) | (2 if head else 0)]) + data)


def exchange(vault, requests, close=False):
    """Sends the requests back to back on one TLS connection; returns every byte the server sent."""
    context = ssl.create_default_context(cafile=vault.info["ca_pem"])
    raw = socket.create_connection(("127.0.0.1", vault.info["port"]), timeout=2)
    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    token = open(vault.info["token_file"]).read().strip()
    for method, path, body in requests:
        data = b"" if body is None else json.dumps(body).encode()
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            method, path, token, len(data), "Connection: close\r\n" if close else "")
        conn.sendall(head.encode() + data)
    conn.settimeout(0.5)
    received = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    except (socket.timeout, ssl.SSLError):
        pass
    conn.close()
    return received


def body_of(response):
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, FakeVaultProcess(tmp) as vault:
        encrypt = exchange(vault, [("POST", "/v1/transit/encrypt/kekd", {"plaintext": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="})])
        save("transit-encrypt-200", encrypt)
        ciphertext = body_of(encrypt)["data"]["ciphertext"]
        batch = {"batch_input": [{"ciphertext": ciphertext}] * 3 + [{"ciphertext": "vault:v1:AAAA"}]}
        save("transit-decrypt-batch-200", exchange(vault, [("POST", "/v1/transit/decrypt/kekd", batch)]))
        save("transit-key-read-200", exchange(vault, [("GET", "/v1/transit/keys/kekd", None)]))
        save("sys-health-200", exchange(vault, [("GET", "/v1/sys/health", None)]))
        save("sys-health-head", exchange(vault, [("HEAD", "/v1/sys/health", None)]), head=True)
        save("token-lookup-self-200", exchange(vault, [("GET", "/v1/auth/token/lookup-self", None)]))
        save("unknown-key-404", exchange(vault, [("POST", "/v1/transit/encrypt/missing", {"plaintext": "AA=="})]))
        save("pipelined-keep-alive", exchange(vault, [("GET", "/v1/sys/health", None), ("GET", "/v1/transit/keys/kekd", None),
                                                      ("POST", "/v1/transit/decrypt/kekd", {"ciphertext": ciphertext})]))
        save("connection-close", exchange(vault, [("GET", "/v1/sys/health", None)], close=True), at_eof=True)
        vault.control("config", {"rules": [{"path": "transit/decrypt", "status": 503, "count": -1}]})
        save("decrypt-503", exchange(vault, [("POST", "/v1/transit/decrypt/kekd", {"ciphertext": ciphertext})]))
        vault.control("config", {"rules": [], "chunked": True})
        save("chunked-transit-encrypt", exchange(vault, [("POST", "/v1/transit/encrypt/kekd", {"plaintext": "AAAA"})]))
        save("chunked-pipelined", exchange(vault, [("POST", "/v1/transit/decrypt/kekd", batch), ("GET", "/v1/sys/health", None)]))
        vault.control("config", {"chunked": False, "sealed": True})
        save("sealed", exchange(vault, [("GET", "/v1/sys/health", None)]))
        vault.control("revoke_all")
        save("permission-denied-403", exchange(vault, [("POST", "/v1/transit/encrypt/kekd", {"plaintext": "AA=="})]))

    go_headers = b"Cache-Control: no-store\r\nContent-Type: application/json\r\nStrict-Transport-Security: max-age=31536000; includeSubDomains\r\nDate: Wed, 25 Nov 2026 14:00:00 GMT\r\n"
    save("go-307-to-active-node", b"HTTP/1.1 307 Temporary Redirect\r\nCache-Control: no-store\r\nLocation: https://10.0.0.2:8200/v1/transit/decrypt/kekd\r\nDate: Wed, 25 Nov 2026 14:00:00 GMT\r\nContent-Length: 0\r\n\r\n")
    save("go-100-continue-then-200", b"HTTP/1.1 100 Continue\r\n\r\n" + b"HTTP/1.1 200 OK\r\n" + go_headers + b"Content-Length: 2\r\n\r\n{}")
    body = b'{"request_id":"6d8a8bc4-1b0c-6d5e-2a8f-0e4f1c2b3a4d","lease_id":"","renewable":false,"lease_duration":0,"data":{"batch_results":[{"plaintext":"AAECAwQ="},{"error":"invalid ciphertext: no prefix"}]},"wrap_info":null,"warnings":null,"auth":null}\n'
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
    save("go-chunked-extensions-trailer", b"HTTP/1.1 200 OK\r\n" + go_headers + b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\nX-Trailer: done\r\n\r\n")
    save("go-429-rate-limited", b"HTTP/1.1 429 Too Many Requests\r\n" + go_headers + b"Retry-After: 1\r\nContent-Length: 36\r\n\r\n{\"errors\":[\"request path quota\"]}\n\n\n")
    save("http10-until-close", b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n{\"errors\":[\"internal error\"]}\n", at_eof=True)
    save("http10-keep-alive", b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n")
    save("duplicate-content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n{}")
    save("truncated-at-eof", b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"data\":", at_eof=True)
    save("connection-close-header", b"HTTP/1.1 400 Bad Request\r\nConnection: keep-alive, Close\r\nContent-Length: 32\r\n\r\n{\"errors\":[\"missing plaintext\"]}")


if __name__ == "__main__":
    main()
