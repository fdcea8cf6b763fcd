import HPACK
import Testing
@testable import HTTP2

@Suite struct StateMachineTests {
    @Test func halfClosedLocalStillReceivesUntilPeerEnds() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        // We answer in full before the request ends: open → half-closed (local).
        server.sendHeaders(streamID: 1, fields: okStatus, endStream: false)
        server.sendHeaders(streamID: 1, fields: okTrailers, endStream: true)
        #expect(server.openStreamCount == 1)
        server.sendData(streamID: 1, bytes: [1], endStream: false)   // ignored: our side is closed
        #expect(dataBytes(server.outputFrames()).total == 0)
        #expect(server.feed(frameBytes(1, .data(bytes: [5], endStream: false, padding: nil)))
                == [.data(streamID: 1, bytes: [5], endStream: false)])
        // half-closed (local) → closed on the peer's END_STREAM.
        #expect(server.feed(frameBytes(1, .data(bytes: [6], endStream: true, padding: nil)))
                == [.data(streamID: 1, bytes: [6], endStream: true)])
        #expect(server.openStreamCount == 0)
    }

    @Test func resetAfterEarlyAnswerIgnoresTheRestOfTheRequest() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        server.sendHeaders(streamID: 1, fields: okStatus + [HeaderField(name: "grpc-status", value: "8")], endStream: true)
        server.resetStream(streamID: 1, code: .noError)   // gRPC "early server closure"
        let frames = server.outputFrames()
        #expect(rstCodes(frames) == [1: .noError])
        #expect(server.feed(frameBytes(1, .data(bytes: [UInt8](repeating: 0, count: 1000), endStream: true,
                                                padding: nil))).isEmpty)
        #expect(server.outputFrames().isEmpty)
        #expect(server.openStreamCount == 0)
    }

    @Test func byteByByteFeedingGivesTheSameEventsAndOutput() {
        var client = FakeClient()
        var input = HTTP2Constants.clientPreface + frameBytes(0, .settings([HTTP2Setting(id: 4, value: 100_000)], ack: false))
        input += client.headers(1) + frameBytes(1, .data(bytes: [1, 2, 3], endStream: false, padding: 5))
        input += frameBytes(0, .ping(opaque: 9, ack: false)) + frameBytes(0, .windowUpdate(increment: 1000))
        let block = client.block()
        input += frameBytes(3, .headers(block: block.prefix(4), endStream: false, endHeaders: false,
                                        priority: nil, padding: nil))
        input += frameBytes(3, .continuation(block: block.dropFirst(4), endHeaders: true))
        input += client.headers(1, [HeaderField(name: "x-trailer", value: "t")], endStream: true)
        input += frameBytes(3, .rstStream(.cancel)) + frameBytes(0, .settings([], ack: true))

        func run(chunk: Int) -> ([HTTP2Event], [UInt8]) {
            let server = HTTP2Connection(role: .server)
            var events: [HTTP2Event] = []
            var output = server.takeOutput()
            var offset = 0
            while offset < input.count {
                let end = min(input.count, offset + chunk)
                events += server.receive(input[offset..<end])
                output += server.takeOutput()
                offset = end
            }
            return (events, output)
        }
        let whole = run(chunk: input.count)
        #expect(whole.0.count == 6)
        for chunk in [1, 2, 3, 7, 9, 10, 100] {
            let split = run(chunk: chunk)
            #expect(split.0 == whole.0, "chunk \(chunk)")
            #expect(split.1 == whole.1, "chunk \(chunk)")
        }
    }
}

@Suite struct ClientRoleTests {
    static func handshakenClient() -> HTTP2Connection {
        let client = HTTP2Connection(role: .client)
        _ = client.takeOutput()
        _ = client.feed(frameBytes(0, .settings([], ack: false)))
        _ = client.takeOutput()
        return client
    }

    @Test func serverMustStartWithSettings() {
        let client = HTTP2Connection(role: .client)
        #expect(isConnectionError(client.feed(frameBytes(0, .ping(opaque: 1, ack: false))), .protocolError))
    }

    @Test func pushIsRefused() {
        let client = Self.handshakenClient()
        #expect(isConnectionError(client.feed(frameBytes(0, .settings([HTTP2Setting(id: 2, value: 1)], ack: false))),
                                  .protocolError))
        let client2 = Self.handshakenClient()
        let id = client2.openStream() ?? 0
        client2.sendHeaders(streamID: id, fields: ConversationTests.request("/x"), endStream: true)
        #expect(isConnectionError(client2.feed(frameBytes(id, .pushPromise(promisedStreamID: 2, block: [0x82],
                                                                            endHeaders: true, padding: nil))),
                                  .protocolError))
        var server = FakeClient()
        let client3 = Self.handshakenClient()
        #expect(isConnectionError(client3.feed(server.headers(2, okStatus)), .protocolError))
    }

    @Test func responseLifecycleAndPingAck() {
        var server = FakeClient()
        let client = Self.handshakenClient()
        let id = client.openStream() ?? 0
        #expect(id == 1)
        #expect(client.openStream() == 3)
        client.sendHeaders(streamID: 1, fields: ConversationTests.request("/x"), endStream: true)
        client.ping(opaque: 77)
        let informational = [HeaderField(name: ":status", value: "100")]
        var events = client.feed(server.headers(1, informational) + server.headers(1, okStatus)
            + frameBytes(1, .data(bytes: [4], endStream: false, padding: nil))
            + server.headers(1, okTrailers, endStream: true) + frameBytes(0, .ping(opaque: 77, ack: true)))
        #expect(events == [.headers(streamID: 1, fields: okStatus, endStream: false),
                           .data(streamID: 1, bytes: [4], endStream: false),
                           .headers(streamID: 1, fields: okTrailers, endStream: true),
                           .pingAck(opaque: 77)])
        #expect(client.openStreamCount == 1)   // stream 3 is reserved, not yet used
        // Frames on a reserved (idle) stream are a protocol error.
        events = client.feed(frameBytes(3, .data(bytes: [1], endStream: false, padding: nil)))
        #expect(isConnectionError(events, .protocolError))
    }
}
