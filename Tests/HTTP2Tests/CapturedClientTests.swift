// Replays client byte streams captured from grpcio (gRPC C-core) and Python h2, stored as the http2-connection
// fuzz seeds (layout in Tests/Fuzz/http2-connection/main.swift: control byte, bit 0 = prefix the preface, bits 1-5
// = chunk size, bit 6 = frame records), through a server connection: every captured call must reach the owner and
// complete without a connection error.
import Foundation
import HPACK
import Testing
@testable import HTTP2

private let seedDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fuzz/corpus/http2-connection")

@Suite struct CapturedClientTests {
    static func rawStreamSeeds() throws -> [(name: String, bytes: [UInt8])] {
        try FileManager.default.contentsOfDirectory(atPath: seedDirectory.path).sorted().compactMap { name in
            let bytes = [UInt8](try Data(contentsOf: seedDirectory.appendingPathComponent(name)))
            guard let control = bytes.first, control & 0x40 == 0 else { return nil }   // records: fuzzer-only form
            return (name, bytes)
        }
    }

    /// grpcio (C-core) captures: real client bytes, all calls must be served.
    @Test func capturedGRPCCoreClientsAreServed() throws {
        let seeds = try Self.rawStreamSeeds().filter { $0.name.hasPrefix("grpcio-") }
        #expect(seeds.count >= 10)
        for seed in seeds {
            let control = seed.bytes[0]
            let input = (control & 1 == 1 ? HTTP2Constants.clientPreface : []) + seed.bytes.dropFirst()
            let chunk = Int((control >> 1) & 0x1F) * 7 + 1
            let server = HTTP2Connection(role: .server)
            var opened = Set<UInt32>()
            var finished = Set<UInt32>()
            var problems: [HTTP2Event] = []
            var offset = 0
            while offset < input.count {
                let end = min(input.count, offset + chunk)
                for event in server.receive(input[offset..<end]) {
                    switch event {
                    case let .headers(id, fields, endStream):
                        opened.insert(id)
                        #expect(fields.contains(HeaderField(name: ":method", value: "POST")), "\(seed.name)")
                        if endStream { finished.insert(id) }
                    case let .data(id, _, endStream):
                        if endStream { finished.insert(id) }
                    case let .streamReset(id, _):
                        finished.insert(id)
                    case .connectionError, .streamError:
                        problems.append(event)
                    default:
                        break
                    }
                }
                offset = end
            }
            for id in finished.sorted() {
                server.sendHeaders(streamID: id, fields: okStatus, endStream: false)
                server.sendData(streamID: id, bytes: [0, 0, 0, 0, 0], endStream: false)
                server.sendHeaders(streamID: id, fields: okTrailers, endStream: true)
            }
            #expect(problems.isEmpty, "\(seed.name): \(problems)")
            #expect(!opened.isEmpty, "\(seed.name): no call reached the owner")
            #expect(finished == opened, "\(seed.name): unfinished calls")
            #expect(!server.didFail, "\(seed.name)")
            #expect(parseFrames(server.takeOutput()).allSatisfy { $0.streamID == 0 || opened.contains($0.streamID) })
        }
    }

    /// The h2 capture deliberately ends in violations: an oversized header list (stream error) and a PUSH_PROMISE
    /// from the client (connection PROTOCOL_ERROR with GOAWAY).
    @Test func capturedH2EdgeCasesGetTheRFCErrors() throws {
        let seeds = try Self.rawStreamSeeds().filter { $0.name.hasPrefix("h2-client-frames") }
        #expect(seeds.count >= 1)
        for seed in seeds {
            let control = seed.bytes[0]
            let server = HTTP2Connection(role: .server)
            let events = server.feed((control & 1 == 1 ? HTTP2Constants.clientPreface : []) + seed.bytes.dropFirst())
            #expect(isStreamError(events, 3, .enhanceYourCalm), "\(seed.name)")
            #expect(isConnectionError(events, .protocolError), "\(seed.name)")
            #expect(goAwayCode(server.outputFrames()) == .protocolError)
        }
    }
}
