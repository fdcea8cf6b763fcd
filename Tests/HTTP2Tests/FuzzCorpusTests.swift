// Replays the libFuzzer seed corpora (Tests/Fuzz/corpus/http2-*, layouts in Tests/Fuzz/http2-*/main.swift) so the
// seeds stay meaningful: they must reach deep states (requests served, no connection error) rather than bounce off
// the first frame.
import Foundation
import HPACK
import Testing
@testable import HTTP2

private let corpusRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fuzz/corpus")

private func seeds(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
    let directory = corpusRoot.appendingPathComponent(target)
    return try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted().map { name in
        (name, [UInt8](try Data(contentsOf: directory.appendingPathComponent(name))))
    }
}

@Suite struct FuzzCorpusTests {
    @Test func frameSeedsParseCompletely() throws {
        let all = try seeds("http2-frames")
        #expect(all.count >= 3)
        for seed in all {
            var reader = FrameReader()
            reader.append(seed.bytes.dropFirst())
            var count = 0
            while let frame = try reader.nextFrame() {
                count += 1
                var again = FrameReader()
                again.append(frame.serialized()[...])
                #expect(try again.nextFrame() == frame, "\(seed.name)")
            }
            #expect(count > 3 && reader.bufferedByteCount == 0, "\(seed.name)")
        }
    }

    @Test func connectionSeedsReachServedRequests() throws {
        let all = try seeds("http2-connection")
        #expect(all.count >= 5)
        for seed in all {
            guard let config = seed.bytes.first else { continue }
            let isClient = config & 0x04 != 0
            var limits = HTTP2Limits()
            if config & 0x08 != 0 { limits.maxConcurrentStreams = 2; limits.initialWindowSize = 100 }
            let connection = HTTP2Connection(role: isClient ? .client : .server, limits: limits)
            if isClient {
                for _ in 0..<2 {
                    guard let id = connection.openStream() else { continue }
                    connection.sendHeaders(streamID: id, fields: ConversationTests.request("/p"), endStream: true)
                }
            }
            let input = (isClient ? [] : HTTP2Constants.clientPreface) + seed.bytes.dropFirst()
            let chunk = [Int.max, 1, 7, 100][Int(config & 0x03)]
            var events: [HTTP2Event] = []
            var offset = 0
            while offset < input.count {
                let end = min(input.count, offset + chunk)
                events += connection.receive(input[offset..<end])
                offset = end
            }
            let output = parseFrames(connection.takeOutput())
            let headers = events.filter { if case .headers = $0 { true } else { false } }
            #expect(!headers.isEmpty, "\(seed.name): no request reached the owner")
            #expect(!isConnectionError(events, .protocolError) && !isConnectionError(events, .compressionError),
                    "\(seed.name): \(events)")
            #expect(output.allSatisfy { $0.serialized().count <= 16384 + 9 }, "\(seed.name)")
            if seed.name.hasPrefix("continuation") { #expect(rstCodes(output)[7] == .protocolError) }
        }
    }
}
