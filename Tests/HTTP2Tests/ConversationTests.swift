import HPACK
import Testing
@testable import HTTP2

/// Pumps bytes between two in-memory connections until both are quiet, handing events to the callbacks.
func pump(_ client: HTTP2Connection, _ server: HTTP2Connection, chunk: Int = Int.max,
          onServer: (HTTP2Event) -> Void, onClient: (HTTP2Event) -> Void) {
    var rounds = 0
    while (client.hasOutput || server.hasOutput) && rounds < 10_000 {
        rounds += 1
        for toServer in [true, false] {
            let bytes = (toServer ? client : server).takeOutput()
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + chunk)
                for event in (toServer ? server : client).receive(bytes[offset..<end]) {
                    if toServer { onServer(event) } else { onClient(event) }
                }
                offset = end
            }
        }
    }
}

@Suite struct ConversationTests {
    static func request(_ path: String) -> [HeaderField] {
        [HeaderField(name: ":method", value: "POST"), HeaderField(name: ":scheme", value: "http"),
         HeaderField(name: ":path", value: path), HeaderField(name: ":authority", value: "localhost"),
         HeaderField(name: "content-type", value: "application/grpc"), HeaderField(name: "te", value: "trailers")]
    }

    /// Runs `count` concurrent echo calls of `size` bytes each; returns the client-side events per stream.
    static func runEcho(count: Int, size: Int, chunk: Int = Int.max) -> [UInt32: [UInt8]] {
        let client = HTTP2Connection(role: .client)
        let server = HTTP2Connection(role: .server)
        var requestBodies: [UInt32: [UInt8]] = [:]
        var responses: [UInt32: [UInt8]] = [:]
        var trailersSeen = Set<UInt32>()
        var serverBodies: [UInt32: [UInt8]] = [:]
        pump(client, server, chunk: chunk, onServer: { _ in }, onClient: { _ in })
        for i in 0..<count {
            guard let id = client.openStream() else {
                Issue.record("openStream failed at \(i)")
                break
            }
            let body = (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ i) }
            requestBodies[id] = body
            client.sendHeaders(streamID: id, fields: request("/echo/\(i)"), endStream: false)
            client.sendData(streamID: id, bytes: body, endStream: true)
        }
        pump(client, server, chunk: chunk, onServer: { event in
            switch event {
            case let .headers(_, fields, endStream):
                #expect(fields.first?.name == ":method" && !endStream)
            case let .data(id, bytes, endStream):
                serverBodies[id, default: []] += bytes
                if endStream {
                    server.sendHeaders(streamID: id, fields: okStatus, endStream: false)
                    server.sendData(streamID: id, bytes: serverBodies[id] ?? [], endStream: false)
                    server.sendHeaders(streamID: id, fields: okTrailers, endStream: true)
                }
            default:
                Issue.record("unexpected server event \(event)")
            }
        }, onClient: { event in
            switch event {
            case let .headers(id, fields, endStream):
                if endStream { trailersSeen.insert(id); #expect(fields == okTrailers) } else { #expect(fields == okStatus) }
            case let .data(id, bytes, _):
                responses[id, default: []] += bytes
            case .settingsAcked:
                break
            default:
                Issue.record("unexpected client event \(event)")
            }
        })
        #expect(trailersSeen.count == count)
        #expect(responses == requestBodies)
        #expect(client.openStreamCount == 0 && server.openStreamCount == 0)
        #expect(client.queuedOutputBytes == 0 && server.queuedOutputBytes == 0)
        return responses
    }

    @Test func manyConcurrentSmallCalls() {
        #expect(Self.runEcho(count: 100, size: 37).count == 100)
    }

    @Test func concurrentLargeCallsExerciseFlowControlBothWays() {
        // 20 × 200 KiB each way is far beyond the 64 KiB default windows of the client's peer view.
        #expect(Self.runEcho(count: 20, size: 200 * 1024).count == 20)
    }

    @Test func byteByByteFeedingEqualsWholeBuffers() {
        #expect(Self.runEcho(count: 5, size: 3000, chunk: 1) == Self.runEcho(count: 5, size: 3000))
        #expect(Self.runEcho(count: 5, size: 20000, chunk: 7).count == 5)
    }

    @Test func clientSeesRefusedStreamsAfterGoAway() {
        let client = HTTP2Connection(role: .client)
        let server = HTTP2Connection(role: .server)
        pump(client, server, onServer: { _ in }, onClient: { _ in })
        let first = client.openStream() ?? 0
        client.sendHeaders(streamID: first, fields: Self.request("/a"), endStream: true)
        pump(client, server, onServer: { _ in }, onClient: { _ in })
        let second = client.openStream() ?? 0
        client.sendHeaders(streamID: second, fields: Self.request("/b"), endStream: true)
        _ = client.takeOutput()   // lost in flight: the server never sees stream 3
        server.goAway(code: .noError, debug: "restart")
        var clientEvents: [HTTP2Event] = []
        pump(client, server, onServer: { _ in }, onClient: { clientEvents.append($0) })
        #expect(clientEvents == [.goAwayReceived(lastStreamID: first, code: .noError),
                                 .streamReset(streamID: second, code: .refusedStream)])
        #expect(client.openStream() == nil)
    }

    @Test func clientHonoursPeerMaxConcurrentStreams() {
        var limits = HTTP2Limits()
        limits.maxConcurrentStreams = 3
        let client = HTTP2Connection(role: .client)
        let server = HTTP2Connection(role: .server, limits: limits)
        pump(client, server, onServer: { _ in }, onClient: { _ in })
        let ids = (0..<4).compactMap { _ in client.openStream() }
        #expect(ids == [1, 3, 5])
    }

    @Test func clientRejectsMalformedResponse() {
        let client = HTTP2Connection(role: .client)
        let server = HTTP2Connection(role: .server)
        pump(client, server, onServer: { _ in }, onClient: { _ in })
        let id = client.openStream() ?? 0
        client.sendHeaders(streamID: id, fields: Self.request("/a"), endStream: true)
        var clientEvents: [HTTP2Event] = []
        pump(client, server, onServer: { _ in
            server.sendHeaders(streamID: id, fields: [HeaderField(name: "content-type", value: "x")], endStream: true)
        }, onClient: { clientEvents.append($0) })
        #expect(isStreamError(clientEvents, id, .protocolError))
    }
}
