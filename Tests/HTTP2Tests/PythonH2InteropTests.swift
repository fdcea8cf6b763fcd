import Foundation
import HPACK
import Testing
@testable import HTTP2

/// Drives an HTTP2Connection against the Python `h2` library (a strict, independent implementation) in lock step.
struct H2PeerSession {
    let process = Process()
    let toPeer = Pipe()
    let fromPeer = Pipe()

    init(mode: String) throws {
        let python = ProcessInfo.processInfo.environment["KEKD_PYTHON"] ?? "python3"
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("kekd-h2-peer-\(getpid()).py")
        try h2PeerScript.write(to: script, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script.path, mode]
        process.standardInput = toPeer
        process.standardOutput = fromPeer
        try process.run()
    }

    private func read(_ count: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while bytes.count < count {
            guard let chunk = try fromPeer.fileHandleForReading.read(upToCount: count - bytes.count), !chunk.isEmpty else {
                throw CocoaError(.fileReadUnknown)
            }
            bytes += chunk
        }
        return bytes
    }

    private func readMessage() throws -> [UInt8]? {
        let header = try read(4)
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        if length == 0xFFFF_FFFF { return nil }
        return try read(length)
    }

    /// Exchanges messages until the peer finishes; returns its JSON summary.
    func run(_ connection: HTTP2Connection, onEvent: (HTTP2Event) -> Void) throws -> [String: Any] {
        while let message = try readMessage() {
            for event in connection.receive(message[...]) { onEvent(event) }
            let out = connection.takeOutput()
            var framed: [UInt8] = []
            FrameWriter.appendUInt32(UInt32(out.count), into: &framed)
            try toPeer.fileHandleForWriting.write(contentsOf: Data(framed + out))
        }
        let summary = try readMessage() ?? []
        process.waitUntilExit()
        return (try JSONSerialization.jsonObject(with: Data(summary)) as? [String: Any]) ?? [:]
    }
}

@Suite(.enabled(if: ProcessInfo.processInfo.environment["KEKD_PYTHON"] != nil, "needs KEKD_PYTHON with h2"))
struct PythonH2InteropTests {
    @Test func pythonH2ClientAgainstOurServer() throws {
        let server = HTTP2Connection(role: .server)
        var bodies: [UInt32: [UInt8]] = [:]
        var errors: [HTTP2Event] = []
        var sawGoAway = false
        let summary = try H2PeerSession(mode: "client").run(server) { event in
            switch event {
            case let .headers(id, fields, endStream):
                #expect(fields.contains(HeaderField(name: "user-agent", value: "h2-test")))
                bodies[id] = []
                if endStream { errors.append(event) }
            case let .data(id, bytes, endStream):
                bodies[id, default: []] += bytes
                if endStream {
                    server.sendHeaders(streamID: id, fields: okStatus, endStream: false)
                    server.sendData(streamID: id, bytes: bodies[id] ?? [], endStream: false)
                    server.sendHeaders(streamID: id, fields: okTrailers, endStream: true)
                }
            case .goAwayReceived:
                sawGoAway = true
            case .settingsAcked:
                break
            default:
                errors.append(event)
            }
        }
        #expect(errors.isEmpty)
        #expect(summary["error"] == nil, "\(summary)")
        #expect(summary["echoed"] as? Bool == true)
        #expect(summary["streams"] as? Int == 6)
        #expect(summary["statuses"] as? [String] == ["200"])
        #expect(summary["grpc_status"] as? [String] == ["0"])
        #expect(summary["ping_acked"] as? Bool == true)
        #expect(summary["settings_acked"] as? Bool == true)
        #expect(sawGoAway)
    }

    @Test func ourClientAgainstPythonH2Server() throws {
        let client = HTTP2Connection(role: .client)
        let sizes = [10, 100_000, 0, 50_000]
        var expected: [UInt32: [UInt8]] = [:]
        for (i, size) in sizes.enumerated() {
            guard let id = client.openStream() else { Issue.record("no stream id"); return }
            let body = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 3 &+ i) }
            expected[id] = body
            client.sendHeaders(streamID: id, fields: ConversationTests.request("/echo/\(i)"), endStream: false)
            client.sendData(streamID: id, bytes: body, endStream: true)
        }
        var received: [UInt32: [UInt8]] = [:]
        var finished = Set<UInt32>()
        var unexpected: [HTTP2Event] = []
        let summary = try H2PeerSession(mode: "server").run(client) { event in
            switch event {
            case let .headers(id, fields, endStream):
                if endStream {
                    finished.insert(id)
                    #expect(fields == okTrailers)
                    if finished.count == sizes.count { client.goAway(code: .noError, debug: "done") }
                } else {
                    #expect(fields == okStatus)
                }
            case let .data(id, bytes, _):
                received[id, default: []] += bytes
            case .settingsAcked, .pingAck:
                break
            default:
                unexpected.append(event)
            }
        }
        #expect(unexpected.isEmpty)
        #expect(summary["error"] == nil, "\(summary)")
        #expect(summary["served"] as? Int == 4)
        #expect(summary["goaway"] as? Bool == true)
        #expect(received == expected.filter { !$0.value.isEmpty })
        #expect(finished.count == 4)
    }
}
