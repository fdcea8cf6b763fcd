"""Raw HTTP/2 abuse with the independent `h2` library; after each case a fresh grpcio client still gets Status ok."""
import socket
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def connect(kekd):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(kekd.socket)
    return s


def read_frames(s, timeout=3.0):
    """Reads until the peer closes or the timeout passes; returns (type, flags, stream, payload) tuples."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    frames, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        frames.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF, data[i + 9:i + 9 + n]))
        i += 9 + n
    return frames


def goaway_code(frames):
    for t, _, _, p in frames:
        if t == 7:
            return int.from_bytes(p[4:8], "big")
    return None


def assert_still_serving(kekd, kms_pb):
    channel = grpc.insecure_channel(kekd.target)
    stub = kms_pb[1].KeyManagementServiceStub(channel)
    assert stub.Status(kms_pb[0].StatusRequest(), timeout=5).healthz == "ok"
    channel.close()


def test_server_sends_settings_first_and_acks_ping(kekd, kms_pb):
    s = connect(kekd)
    s.sendall(PREFACE + frame(4, 0, 0, b"") + frame(6, 0, 0, b"\x02\x04\x10\x10\x09\x0e\x07\x07"))
    frames = read_frames(s, timeout=1.0)
    assert frames[0][0] == 4 and frames[0][1] == 0, "first server frame must be SETTINGS"
    assert any(t == 4 and f == 1 for t, f, _, _ in frames), "SETTINGS ACK expected"
    assert (6, 1, 0, b"\x02\x04\x10\x10\x09\x0e\x07\x07") in frames, "PING ACK with the same opaque data expected"
    s.close()
    assert_still_serving(kekd, kms_pb)


def test_bad_preface(kekd, kms_pb):
    s = connect(kekd)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    frames = read_frames(s)
    assert goaway_code(frames) == 1  # PROTOCOL_ERROR
    s.close()
    assert_still_serving(kekd, kms_pb)


def test_oversized_frame(kekd, kms_pb):
    s = connect(kekd)
    s.sendall(PREFACE + frame(4, 0, 0, b"") + frame(0, 0, 1, b"x" * 20000))
    assert goaway_code(read_frames(s)) == 6  # FRAME_SIZE_ERROR
    s.close()
    assert_still_serving(kekd, kms_pb)


def test_bad_hpack_block(kekd, kms_pb):
    s = connect(kekd)
    # 0xbf... indexes far beyond the static + dynamic tables.
    s.sendall(PREFACE + frame(4, 0, 0, b"") + frame(1, 0x4 | 0x1, 1, b"\xff\xff\xff\x7f"))
    assert goaway_code(read_frames(s)) == 9  # COMPRESSION_ERROR
    s.close()
    assert_still_serving(kekd, kms_pb)


def test_rst_stream_storm(kekd, kms_pb):
    """CVE-2023-44487: open and reset streams as fast as possible; kekd must cut it off and keep serving others."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s = connect(kekd)
    s.sendall(conn.data_to_send())
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/v2.KeyManagementService/Status"),
               (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")]
    closed = False
    try:
        for _ in range(5000):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            conn.reset_stream(sid)
            s.sendall(conn.data_to_send())
    except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
        closed = True
    frames = read_frames(s, timeout=2.0)
    code = goaway_code(frames)
    assert closed or code == 11, f"expected ENHANCE_YOUR_CALM GOAWAY, got {code}"
    s.close()
    assert_still_serving(kekd, kms_pb)


def test_preface_deadline(kekd_factory, kms_pb):
    k = kekd_factory(extra=["--preface-timeout", "1s"])
    s = connect(k)
    t0 = time.time()
    frames = read_frames(s, timeout=6.0)
    assert time.time() - t0 < 5.5, "a silent client must be dropped after the preface deadline"
    assert frames and frames[0][0] == 4
    s.close()
    assert_still_serving(k, kms_pb)


def test_continuation_flood(kekd, kms_pb):
    s = connect(kekd)
    payload = PREFACE + frame(4, 0, 0, b"") + frame(1, 0, 1, b"\x83\x86")
    payload += b"".join(frame(9, 0, 1, b"") for _ in range(10000))
    try:
        s.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    code = goaway_code(read_frames(s))
    assert code in (1, 11), code
    s.close()
    assert_still_serving(kekd, kms_pb)


def test_h2_client_gets_grpc_trailers(kekd, kms_pb):
    """A plain h2 client (not gRPC) sees :status 200, a framed message, and grpc-status 0 in trailers."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    s = connect(kekd)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/v2.KeyManagementService/Status"),
                            (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")])
    conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    s.sendall(conn.data_to_send())
    got_headers, body, trailers, done = None, b"", None, False
    deadline = time.time() + 5
    while not done and time.time() < deadline:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                got_headers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
        s.sendall(conn.data_to_send())
    s.close()
    assert got_headers[":status"] == "200" and got_headers["content-type"].startswith("application/grpc")
    assert trailers["grpc-status"] == "0"
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    msg = kms_pb[0].StatusResponse.FromString(body[5:])
    assert msg.healthz == "ok" and msg.version == "v2"


def test_client_that_never_reads_cannot_grow_memory(kekd_factory, kms_pb):
    """A peer that opens no flow-control window makes kekd queue responses; past --max-queued-output it is cut off."""
    k = kekd_factory(extra=["--max-queued-output", "64Ki"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    conn.initiate_connection()
    s = connect(k)
    s.sendall(conn.data_to_send())
    time.sleep(0.2)
    conn.receive_data(s.recv(65536))  # kekd's SETTINGS and window: after this we never read again
    s.sendall(conn.data_to_send())
    body = kms_pb[0].EncryptRequest(plaintext=b"p" * 40000, uid="x").SerializeToString()
    framed = b"\x00" + len(body).to_bytes(4, "big") + body
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/v2.KeyManagementService/Encrypt"),
               (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")]
    try:
        for _ in range(4):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            for i in range(0, len(framed), 16384):
                conn.send_data(sid, framed[i:i + 16384], end_stream=i + 16384 >= len(framed))
            s.sendall(conn.data_to_send())
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert goaway_code(read_frames(s)) == 11  # ENHANCE_YOUR_CALM
    s.close()
    assert_still_serving(k, kms_pb)
