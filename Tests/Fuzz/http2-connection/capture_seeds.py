#!/usr/bin/env python3
"""Builds the seed corpora of the HTTP/2 fuzz targets from real client traffic.

Usage: $KEKD_PYTHON Tests/Fuzz/http2-connection/capture_seeds.py   (from the repository root)

1. A real gRPC C-core client (grpcio, stubs generated from Proto/kms/v2/api.proto) calls Status, Encrypt and Decrypt
   (32-byte DEK, annotations, a 200 KiB plaintext that needs WINDOW_UPDATEs, a deadline, a cancelled call) against
   a small recording server built on the Python `h2` library; the bytes each client connection sent are captured.
2. The `h2` client library writes frames grpcio does not send: PRIORITY, padded DATA, CONTINUATION, PING, RST_STREAM,
   GOAWAY, every SETTINGS parameter, plus raw unknown-type and PUSH_PROMISE frames.

Seeds are written to Tests/Fuzz/corpus/http2-connection/ (byte 0 = harness control byte, see its main.swift; raw
streams, and frame records for the small ones) and
Tests/Fuzz/corpus/http2-frames/ (byte 0 = chunk size selector, then the frames after the preface).
"""
import os
import socket
import struct
import sys
import tempfile
import threading
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def load_stubs():
    out = tempfile.mkdtemp(prefix="kekd-seeds-")
    if protoc.main(["protoc", "-I", os.path.join(ROOT, "Proto"), "--python_out", out, "--grpc_python_out", out,
                    "kms/v2/api.proto"]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from kms.v2 import api_pb2, api_pb2_grpc
    return api_pb2, api_pb2_grpc


def serve(listener, captured):
    """Accepts connections forever; answers every request with an empty message and grpc-status 0."""
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(sock, captured), daemon=True).start()


def handle(sock, captured):
    record = bytearray()
    captured.append(record)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        record.extend(data)
        try:
            events = conn.receive_data(data)
        except Exception:  # noqa: BLE001 - the recorder only needs the client's bytes
            break
        ended = [event.stream_id for event in events if isinstance(event, h2.events.StreamEnded)]
        reset = {event.stream_id for event in events if isinstance(event, h2.events.StreamReset)}
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        for stream_id in ended:
            if stream_id in reset:
                continue
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
            conn.send_data(stream_id, b"\x00\x00\x00\x00\x00")
            conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:  # the client closed first
            break
    sock.close()


def capture_grpcio(api_pb2, api_pb2_grpc):
    """One client connection per scenario, so most seeds stay small: {name: bytes the client sent}."""
    path = os.path.join(tempfile.mkdtemp(prefix="kekd-seeds-"), "kms.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    captured = []
    threading.Thread(target=serve, args=(listener, captured), daemon=True).start()
    annotations = {"version.encryption.kekd.io": b"1", "key.kekd.io": b"k-1a2b3c4d"}
    scenarios = {
        "grpcio-status": lambda stub: stub.Status(api_pb2.StatusRequest(), timeout=5),
        "grpcio-encrypt-32-byte-dek": lambda stub: stub.Encrypt(
            api_pb2.EncryptRequest(plaintext=os.urandom(32), uid="6a0f4a1e-1c5b-4f4e-9d8e-1a2b3c4d5e6f"), timeout=3),
        "grpcio-decrypt-annotations": lambda stub: stub.Decrypt(
            api_pb2.DecryptRequest(ciphertext=os.urandom(70), uid="0b6e2a3c-5d4f-4e6a-8b7c-9d0e1f2a3b4c",
                                   key_id="k-1a2b3c4d5e6f7a8b", annotations=annotations), timeout=3),
        # Larger than the 65,535-byte initial window: the client waits for WINDOW_UPDATEs.
        "grpcio-encrypt-70k": lambda stub: stub.Encrypt(
            api_pb2.EncryptRequest(plaintext=os.urandom(70 * 1024), uid="big"), timeout=5),
        "grpcio-cancelled-then-status": lambda stub: (
            stub.Status.future(api_pb2.StatusRequest(), timeout=5).cancel(),
            stub.Status(api_pb2.StatusRequest(), timeout=5, metadata=[("x-trace", "seed")])),
        "grpcio-three-calls": lambda stub: [stub.Status(api_pb2.StatusRequest(), timeout=5) for _ in range(3)],
    }
    conversations = {}
    for name, scenario in scenarios.items():
        before = len(captured)
        with grpc.insecure_channel("unix:" + path) as channel:
            scenario(api_pb2_grpc.KeyManagementServiceStub(channel))
        time.sleep(0.2)  # let the recorder read the client's last frames (GOAWAY on close)
        conversations[name] = b"".join(bytes(record) for record in captured[before:])
    listener.close()
    return conversations


def h2_client_frames():
    """Frames from the h2 client library, and raw ones it refuses to write."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 8192,
                          h2.settings.SettingCodes.ENABLE_PUSH: 0,
                          h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                          h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                          h2.settings.SettingCodes.MAX_FRAME_SIZE: 32768,
                          h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384})
    request = [(":method", "POST"), (":scheme", "http"), (":path", "/v2.KeyManagementService/Decrypt"),
               (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
               ("grpc-timeout", "2999987u")]
    conn.send_headers(1, request, priority_weight=200, priority_depends_on=0, priority_exclusive=True)
    conn.send_data(1, b"\x00\x00\x00\x00\x05\x0a\x03abc", pad_length=17)
    conn.send_data(1, b"", end_stream=True)
    conn.prioritize(3, weight=16, depends_on=1)
    conn.send_headers(3, request + [("x-large", "v" * 20000)], end_stream=True)  # forces CONTINUATION frames
    conn.ping(b"12345678")
    conn.reset_stream(3, error_code=8)
    conn.increment_flow_control_window(1 << 16)
    conn.close_connection(error_code=0, additional_data=b"bye")
    frames = conn.data_to_send()
    unknown = struct.pack(">I", 5)[1:] + bytes([0xfa, 0x00]) + struct.pack(">I", 0) + b"hello"
    push = struct.pack(">I", 4 + 3)[1:] + bytes([5, 0x04]) + struct.pack(">I", 1) + struct.pack(">I", 2) + b"\x82\x86\x84"
    return frames + unknown + push


def frame_records(stream):
    """Frames -> the harness's record form [type][flags][stream id byte][length: 2 bytes][payload]."""
    out = bytearray()
    index = 0
    while index + 9 <= len(stream):
        length = int.from_bytes(stream[index:index + 3], "big")
        frame_type, flags = stream[index + 3], stream[index + 4]
        stream_id = int.from_bytes(stream[index + 5:index + 9], "big") & 0x7FFFFFFF
        payload = stream[index + 9:index + 9 + length]
        out += bytes([frame_type, flags, stream_id & 0xFF]) + len(payload).to_bytes(2, "big") + payload
        index += 9 + length
    return bytes(out)


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as out:
        out.write(data)


def main():
    api_pb2, api_pb2_grpc = load_stubs()
    conversations = capture_grpcio(api_pb2, api_pb2_grpc)
    conversations["h2-client-frames"] = h2_client_frames()
    connection_dir = os.path.join(ROOT, "Tests/Fuzz/corpus/http2-connection")
    frames_dir = os.path.join(ROOT, "Tests/Fuzz/corpus/http2-frames")
    for name, stream in conversations.items():
        assert stream.startswith(PREFACE), f"{name}: a client connection starts with the preface"
        after = stream[len(PREFACE):]
        # Control byte: bit 0 = harness adds the preface; bits 1-5 = chunk size selector.
        write(connection_dir, f"{name}-preface-added", bytes([0x3f]) + after)
        write(connection_dir, f"{name}-with-preface-small-chunks", bytes([0x02]) + stream)
        write(frames_dir, name, bytes([0x1f]) + after)
        if len(after) < 8192:
            # Control byte 0x41: frame records (see the harness), preface added.
            write(connection_dir, f"{name}-records", bytes([0x41]) + frame_records(after))
        print(f"{name}: {len(stream)} bytes")


if __name__ == "__main__":
    main()
