// The Python h2 peer script, kept in a Swift string so the test target needs no resource declarations.
let h2PeerScript = #"""
"""A Python `h2` peer for HTTP2Tests: exchanges HTTP/2 bytes with a Swift connection over stdin/stdout.

Messages both ways are a 4-byte big-endian length followed by that many bytes. The Swift side answers every
message with one message (possibly empty). When this peer is done it sends length 0xFFFFFFFF followed by a
length-prefixed JSON summary, then exits.

Modes:
  client  -- h2 is the client: several concurrent POSTs (small and large bodies), a PING, then GOAWAY.
             The Swift side is expected to echo each request body in the response, with grpc-status trailers.
  server  -- h2 is the server: it echoes request bodies the same way for requests the Swift client sends.
"""
import json
import struct
import sys

import h2.config
import h2.connection
import h2.events

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer


def send(payload: bytes) -> None:
    stdout.write(struct.pack(">I", len(payload)) + payload)
    stdout.flush()


def receive() -> bytes:
    header = stdin.read(4)
    if len(header) < 4:
        raise SystemExit("swift side closed the pipe")
    (length,) = struct.unpack(">I", header)
    return stdin.read(length)


def finish(summary: dict) -> None:
    stdout.write(struct.pack(">I", 0xFFFFFFFF))
    send(json.dumps(summary).encode())
    sys.exit(0)


def run_client() -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sizes = [5, 100, 70000, 300000, 0, 16384]
    bodies = {}
    for i, size in enumerate(sizes):
        stream_id = conn.get_next_available_stream_id()
        body = bytes((j + i) % 251 for j in range(size))
        bodies[stream_id] = body
        conn.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", f"/echo/{i}"), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "h2-test"),
        ])
    pending = {sid: bodies[sid] for sid in bodies}
    conn.ping(b"\x02\x04\x10\x10\x09\x0e\x07\x07")
    received = {sid: b"" for sid in bodies}
    trailers = {}
    statuses = {}
    ping_acked = False
    settings_acked = False
    rounds = 0
    while rounds < 10000:
        rounds += 1
        # Send as much request body as flow control allows.
        for sid in list(pending):
            data = pending[sid]
            while True:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0 and data:
                    break
                chunk, data = data[:window], data[window:]
                conn.send_data(sid, chunk, end_stream=not data)
                if not data:
                    break
            if data:
                pending[sid] = data
            else:
                del pending[sid]
        send(conn.data_to_send())
        for event in conn.receive_data(receive()):
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = dict(event.headers).get(":status")
            elif isinstance(event, h2.events.DataReceived):
                received[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.PingAckReceived):
                ping_acked = event.ping_data == b"\x02\x04\x10\x10\x09\x0e\x07\x07"
            elif isinstance(event, h2.events.SettingsAcknowledged):
                settings_acked = True
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                finish({"error": repr(event)})
        if len(trailers) == len(bodies) and ping_acked:
            break
    conn.close_connection()
    send(conn.data_to_send())
    receive()
    finish({
        "echoed": all(received[sid] == bodies[sid] for sid in bodies),
        "statuses": sorted(set(statuses.values())),
        "grpc_status": sorted({t.get("grpc-status") for t in trailers.values()}),
        "streams": len(trailers),
        "ping_acked": ping_acked,
        "settings_acked": settings_acked,
        "rounds": rounds,
    })


def run_server() -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    send(conn.data_to_send())
    bodies = {}
    pending = {}
    done = 0
    ping_acked = False
    ping_sent = False
    goaway = False
    rounds = 0
    while rounds < 10000 and not goaway:
        rounds += 1
        for event in conn.receive_data(receive()):
            if isinstance(event, h2.events.RequestReceived):
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
                pending[event.stream_id] = bodies[event.stream_id]
            elif isinstance(event, h2.events.PingAckReceived):
                ping_acked = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                goaway = True
            elif isinstance(event, h2.events.StreamReset):
                finish({"error": repr(event)})
        for sid in list(pending):
            data = pending[sid]
            while data:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk, data = data[:window], data[window:]
                conn.send_data(sid, chunk)
            if data:
                pending[sid] = data
            else:
                conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                del pending[sid]
                done += 1
        if done >= 4 and not ping_sent:
            conn.ping(b"12345678")
            ping_sent = True
        send(conn.data_to_send())
    finish({"served": done, "ping_acked": ping_acked, "goaway": goaway, "rounds": rounds})


if __name__ == "__main__":
    {"client": run_client, "server": run_server}[sys.argv[1]]()
"""#
