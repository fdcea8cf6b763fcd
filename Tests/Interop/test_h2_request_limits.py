"""Request-side resource limits against an independent HTTP/2 client (`h2`): flow-control credit on consumption,
buffered request bytes capped per connection (issue 15 item 2), and the per-stream request timeout (item 9)."""
import os
import re
import select
import socket
import time
import urllib.request

import grpc
import pytest
import h2.config
import h2.connection
import h2.events
import h2.settings

from conftest import SANITIZED
from test_h2_raw import connect

ENCRYPT_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/v2.KeyManagementService/Encrypt"),
                   (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")]
MiB = 1 << 20


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric(k, name, labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{k.health_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


GRPC_STATUS_NAMES = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                     "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
SNAKE_CASE = re.compile(r"^[a-z0-9_]+$")


def assert_label_vocabulary(k):
    """Every enum-derived label value on /metrics is from its fixed vocabulary, read by prometheus_client's parser:
    `kind` and a backend's `op` are snake_case, never a Swift case name such as enhanceYourCalm; `code` is a gRPC
    status name; the gRPC `op` a KMS method or `other`; a backend `result` `ok` or a status name."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{k.health_port}/metrics", timeout=5).read().decode()
    seen = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, value in sample.labels.items():
                where = (sample.name, label, value)
                if label == "kind" or (label == "op" and sample.name.startswith("kekd_backend_")):
                    assert SNAKE_CASE.match(value), where
                elif label == "op":
                    assert value in {"Status", "Encrypt", "Decrypt", "other"}, where
                elif label == "code":
                    assert value in GRPC_STATUS_NAMES, where
                elif label == "result" and sample.name.startswith("kekd_backend_requests"):
                    assert value == "ok" or value in GRPC_STATUS_NAMES, where
                elif label == "result":
                    assert SNAKE_CASE.match(value), where
                seen.add(label)
    assert {"kind", "op", "code", "result"} <= seen, seen


class H2Client:
    """An h2 client connection on kekd's socket that always reads what kekd sends (no write back-pressure)."""

    def __init__(self, k):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock = connect(k)
        self.sock.setblocking(False)
        self.events = []
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        while data and not self.closed:
            _, writable, _ = select.select([], [self.sock], [], 5)
            assert writable, "kekd stopped reading"
            try:
                sent = self.sock.send(data)
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
                return
            data = data[sent:]
            self.pump(0)

    def pump(self, timeout):
        """Reads whatever kekd sent within `timeout` seconds and feeds it to h2."""
        while not self.closed:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.events += self.conn.receive_data(chunk)
            timeout = 0
        # Replies h2 queued (SETTINGS ACK, PING ACK) go out with the next flush.

    def reset_codes(self):
        return {e.stream_id: e.error_code for e in self.events if isinstance(e, h2.events.StreamReset)}


def grpc_status_ok(k, kms_pb):
    channel = grpc.insecure_channel(k.target)
    try:
        stub = kms_pb[1].KeyManagementServiceStub(channel)
        assert stub.Status(kms_pb[0].StatusRequest(), timeout=5).healthz == "ok"
        pt = os.urandom(256 * 1024)
        enc = stub.Encrypt(kms_pb[0].EncryptRequest(plaintext=pt, uid="second-client"), timeout=5)
        dec = stub.Decrypt(kms_pb[0].DecryptRequest(ciphertext=enc.ciphertext, uid="second-client", key_id=enc.key_id,
                                                    annotations=dict(enc.annotations)), timeout=5)
        assert dec.plaintext == pt
    finally:
        channel.close()


def test_flood_of_incomplete_messages_keeps_rss_bounded_and_others_served(kekd, kms_pb):
    """One connection, 64 streams, each sending as much of a 4 MiB message (that never completes) as kekd's windows
    allow. Before credit was tied to consumption this made kekd hold 256 MiB (RSS ~290 MB)."""
    pid = kekd.proc.pid
    baseline = rss_bytes(pid)
    assert baseline < 48 * MiB
    client = H2Client(kekd)
    client.pump(0.5)
    declared = 4 * MiB
    prefix = b"\x00" + declared.to_bytes(4, "big")
    chunk = bytes(16384)
    streams = {}
    for _ in range(64):
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, ENCRYPT_HEADERS)
        streams[sid] = 0  # bytes sent
    client.flush()
    total = {"sent": 0, "peak_rss": 0}
    goal = 5 + declared - 1  # one byte short: the message never completes
    last_progress = time.monotonic()
    checked_second_client = False
    while time.monotonic() - last_progress < 1.5:
        progressed = False
        for sid in list(streams):
            if sid in client.reset_codes() or client.closed:
                streams.pop(sid)
                continue
            left = goal - streams[sid]
            try:
                room = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size, left)
            except Exception:  # h2 forgot a reset stream
                streams.pop(sid)
                continue
            if room <= 0:
                continue
            payload = (prefix + chunk)[:room] if streams[sid] == 0 else chunk[:room]
            client.conn.send_data(sid, payload)
            streams[sid] += len(payload)
            total["sent"] += len(payload)
            progressed = True
        client.flush()
        client.pump(0 if progressed else 0.05)
        if progressed:
            last_progress = time.monotonic()
        total["peak_rss"] = max(total["peak_rss"], rss_bytes(pid))
        if not checked_second_client and total["sent"] > 24 * MiB:
            grpc_status_ok(kekd, kms_pb)  # answered in the middle of the flood
            checked_second_client = True
    assert not client.closed, "the flood connection itself may stay; its streams are refused"
    total["peak_rss"] = max(total["peak_rss"], rss_bytes(pid))
    print(f"baseline RSS {baseline / MiB:.1f} MiB, sent {total['sent'] / MiB:.1f} MiB, peak RSS {total['peak_rss'] / MiB:.1f} MiB, "
          f"{len(client.reset_codes())} streams reset")
    # The flood was real: far more than one connection's cap was sent, yet kekd stayed small.
    assert total["sent"] > 32 * MiB
    assert SANITIZED or total["peak_rss"] < 64 * MiB
    refused = [sid for sid, code in client.reset_codes().items() if code == 11]  # ENHANCE_YOUR_CALM
    assert refused, "streams over the per-connection cap are refused with ENHANCE_YOUR_CALM"
    assert metric(kekd, "kekd_http2_protocol_errors_total", {"kind": "request_buffer_limit"}) >= len(refused)
    # Still held open by the flood, kekd answers another client (a 256 KiB message included).
    assert checked_second_client
    grpc_status_ok(kekd, kms_pb)
    client.sock.close()


def test_large_messages_still_complete_past_the_stream_window(kekd, kms_pb):
    """Credit for the rest of a declared message: four 3 MiB requests at once on one grpcio channel (each larger
    than the 1 MiB stream window, together within the 16 MiB per-connection cap) all succeed, however late grpcio
    reads their 3 MiB answers (the default --max-queued-output holds the answers to a full request cap)."""
    import concurrent.futures
    channel = grpc.insecure_channel(kekd.target, options=[("grpc.max_receive_message_length", 8 * MiB)])
    stub = kms_pb[1].KeyManagementServiceStub(channel)
    pts = [os.urandom(3 * MiB) for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda pt: stub.Encrypt(kms_pb[0].EncryptRequest(plaintext=pt, uid="big"), timeout=20),
                                pts))
    assert all(r.ciphertext for r in results)
    channel.close()


def test_request_cap_per_connection_is_a_flag(kekd_factory, kms_pb):
    """With --max-buffered-request-bytes-per-connection at its minimum (one largest message), a second message
    in progress on the same connection is refused while the first completes."""
    k = kekd_factory(extra=["--max-message-size", "1Mi", "--max-buffered-request-bytes-per-connection", str(MiB + 5)])
    client = H2Client(k)
    client.pump(0.5)
    body = kms_pb[0].EncryptRequest(plaintext=b"x" * (MiB - 100), uid="a").SerializeToString()
    framed = b"\x00" + len(body).to_bytes(4, "big") + body
    first = client.conn.get_next_available_stream_id()
    client.conn.send_headers(first, ENCRYPT_HEADERS)
    second = client.conn.get_next_available_stream_id()
    client.conn.send_headers(second, ENCRYPT_HEADERS)
    for i in range(0, 4 * 16384, 16384):
        client.conn.send_data(second, framed[i:i + 16384])
    client.flush()
    sent = 0
    deadline = time.monotonic() + 10
    while sent < len(framed) and first not in client.reset_codes() and time.monotonic() < deadline:
        room = min(client.conn.local_flow_control_window(first), client.conn.max_outbound_frame_size, len(framed) - sent)
        if room > 0:
            client.conn.send_data(first, framed[sent:sent + room], end_stream=sent + room == len(framed))
            sent += room
            client.flush()
        client.pump(0 if room > 0 else 0.05)
    # The first stream crossed the cap while the second held 64 KiB: it is the one refused ...
    deadline = time.monotonic() + 5
    while first not in client.reset_codes() and time.monotonic() < deadline:
        client.pump(0.1)
    assert client.reset_codes().get(first) == 11
    trailers = [dict(e.headers) for e in client.events if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                and e.stream_id == first]
    assert any(h.get(b"grpc-status") == b"8" for h in trailers)  # RESOURCE_EXHAUSTED
    client.sock.close()
    # ... and a fresh connection can send the same message whole.
    channel = grpc.insecure_channel(k.target)
    stub = kms_pb[1].KeyManagementServiceStub(channel)
    assert stub.Encrypt(kms_pb[0].EncryptRequest(plaintext=b"x" * (MiB - 100), uid="a"), timeout=10).ciphertext
    channel.close()


def test_half_open_stream_is_reset_then_the_connection_closes_idle(kekd_factory, kms_pb):
    """A stream with HEADERS but no END_STREAM is reset (CANCEL) after --request-timeout, and the connection it
    held then closes at --idle-timeout instead of holding a connection slot forever."""
    k = kekd_factory(extra=["--request-timeout", "1s", "--idle-timeout", "2s"])
    client = H2Client(k)
    client.pump(0.3)
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, ENCRYPT_HEADERS)
    client.conn.send_data(sid, b"\x00\x00\x00\x00\x10")  # a 16-byte message, never sent
    client.flush()
    opened = time.monotonic()
    while sid not in client.reset_codes() and time.monotonic() - opened < 4:
        client.pump(0.05)
    reset_after = time.monotonic() - opened
    assert client.reset_codes().get(sid) == 8  # CANCEL
    assert 0.9 <= reset_after < 2.5, reset_after  # 1 s, with slack for a loaded CI machine
    # Nothing left open: the idle timeout applies (GOAWAY NO_ERROR, then the socket closes).
    while not client.closed and time.monotonic() - opened < 10:
        client.pump(0.1)
    assert client.closed
    goaways = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaways and goaways[0].error_code == 0
    assert time.monotonic() - opened < 8
    assert metric(k, "kekd_http2_protocol_errors_total", {"kind": "request_timeout"}) == 1
    channel = grpc.insecure_channel(k.target)
    assert kms_pb[1].KeyManagementServiceStub(channel).Status(kms_pb[0].StatusRequest(), timeout=5).healthz == "ok"
    channel.close()
    assert_label_vocabulary(k)


def send_incomplete(client, streams, each, declared):
    """Opens `streams` streams and sends `each` bytes of a `declared`-byte message on each, as windows allow."""
    prefix = b"\x00" + declared.to_bytes(4, "big")
    sent = {}
    for _ in range(streams):
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, ENCRYPT_HEADERS)
        sent[sid] = 0
    client.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        progressed = False
        for sid in sent:
            if sid in client.reset_codes() or sent[sid] >= each:
                continue
            room = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size, each - sent[sid])
            if room > 0:
                payload = (prefix + bytes(room))[:room] if sent[sid] == 0 else bytes(room)
                client.conn.send_data(sid, payload)
                sent[sid] += room
                progressed = True
        client.flush()
        client.pump(0 if progressed else 0.05)
        if all(sent[s] >= each or s in client.reset_codes() for s in sent):
            break
    client.pump(0.3)
    return list(sent)


def test_server_wide_cap_spans_connections(kekd_factory, kms_pb):
    """Two connections each within --max-buffered-request-bytes-per-connection, together over
    --max-buffered-request-bytes: the stream that crosses the server-wide cap is refused; closing the first
    connection gives its share back."""
    k = kekd_factory(extra=["--max-message-size", "1Mi", "--max-buffered-request-bytes-per-connection", "4Mi",
                            "--max-buffered-request-bytes", "6Mi"])
    first = H2Client(k)
    first.pump(0.3)
    held = send_incomplete(first, 4, MiB - 1000, MiB)
    assert not first.reset_codes()  # 4 × ~1 MiB: within both caps
    second = H2Client(k)
    second.pump(0.3)
    streams = send_incomplete(second, 3, MiB - 1000, MiB)
    refused = second.reset_codes()
    assert list(refused.values()) == [11], refused  # the third MiB crosses 6 MiB: one stream refused
    assert refused.keys() <= set(streams) and not first.reset_codes() and len(held) == 4
    assert metric(k, "kekd_http2_protocol_errors_total", {"kind": "server_request_buffer_limit"}) == 1
    first.sock.close()
    time.sleep(0.5)
    third = send_incomplete(second, 1, MiB - 1000, MiB)
    assert third[0] not in second.reset_codes()
    second.sock.close()
    grpc_status_ok(k, kms_pb)
    assert_label_vocabulary(k)
