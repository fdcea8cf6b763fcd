import HPACK
import Testing
@testable import HTTP2

/// Sums DATA payload per stream and checks every frame's size.
func dataBytes(_ frames: [Frame], maxFrame: Int = 16384) -> (total: Int, endStream: Bool) {
    var total = 0
    var end = false
    for frame in frames {
        if case let .data(bytes, endStream, _) = frame.payload {
            #expect(bytes.count <= maxFrame)
            total += bytes.count
            end = end || endStream
        }
    }
    return (total, end)
}

@Suite struct FlowControlTests {
    @Test func oneMiBResponseIsReleasedExactlyAsWindowUpdatesArrive() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, endStream: true))
        server.sendHeaders(streamID: 1, fields: okStatus, endStream: false)
        let body = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        server.sendData(streamID: 1, bytes: body, endStream: false)
        server.sendHeaders(streamID: 1, fields: okTrailers, endStream: true)
        var frames = server.outputFrames()
        var received = dataBytes(frames)
        #expect(received.total == 65535)
        #expect(server.queuedOutputBytes == (1 << 20) - 65535)
        #expect(!frames.contains { if case .headers(_, true, _, _, _) = $0.payload { true } else { false } })

        var collected: [UInt8] = []
        for frame in frames { if case let .data(bytes, _, _) = frame.payload { collected += bytes } }
        // Stream window only: nothing moves until the connection window grows too.
        _ = server.feed(frameBytes(1, .windowUpdate(increment: 100_000)))
        #expect(server.outputFrames().isEmpty)
        var sent = 65535
        var steps = 0
        while sent < body.count {
            let grant = 40_000
            _ = server.feed(frameBytes(0, .windowUpdate(increment: UInt32(grant)))
                + frameBytes(1, .windowUpdate(increment: UInt32(grant))))
            frames = server.outputFrames()
            received = dataBytes(frames)
            let expected = min(grant, body.count - sent)
            #expect(received.total == expected)
            for frame in frames { if case let .data(bytes, _, _) = frame.payload { collected += bytes } }
            sent += received.total
            steps += 1
            if received.total == 0 { break }
        }
        #expect(collected == body)
        #expect(server.queuedOutputBytes == 0)
        // The trailers came right after the last DATA, and the stream is done.
        #expect(frames.last.map { if case .headers(_, true, true, _, _) = $0.payload { true } else { false } } == true)
        #expect(server.openStreamCount == 0)
        #expect(steps > 20)
    }

    @Test func initialWindowSizeChangeMidStreamAdjustsOpenStreams() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, endStream: true))
        server.sendHeaders(streamID: 1, fields: okStatus, endStream: false)
        server.sendData(streamID: 1, bytes: [UInt8](repeating: 1, count: 70_000), endStream: true)
        #expect(dataBytes(server.outputFrames()).total == 65535)
        _ = server.feed(frameBytes(0, .windowUpdate(increment: 1_000_000)))   // connection is no longer the limit
        #expect(server.outputFrames().isEmpty)
        // Shrinking the initial window makes the stream window negative: still nothing may be sent.
        _ = server.feed(frameBytes(0, .settings([HTTP2Setting(id: HTTP2Setting.initialWindowSize, value: 65535 - 1000)],
                                                ack: false)))
        #expect(dataBytes(server.outputFrames()).total == 0)
        _ = server.feed(frameBytes(1, .windowUpdate(increment: 1000)))
        #expect(dataBytes(server.outputFrames()).total == 0)   // window back to exactly 0
        // Growing it releases the rest (70000 - 65535 = 4465 bytes) with END_STREAM.
        _ = server.feed(frameBytes(0, .settings([HTTP2Setting(id: HTTP2Setting.initialWindowSize, value: 100_000)],
                                                ack: false)))
        let result = dataBytes(server.outputFrames())
        #expect(result.total == 4465 && result.endStream)
    }

    @Test func peerMaxFrameSizeIsHonouredButNeverAbove16K() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(frameBytes(0, .settings([HTTP2Setting(id: HTTP2Setting.maxFrameSize, value: 1 << 20),
                                                 HTTP2Setting(id: HTTP2Setting.initialWindowSize, value: 1 << 20)],
                                                ack: false))
            + frameBytes(0, .windowUpdate(increment: 1 << 20)) + client.headers(1, endStream: true))
        _ = server.takeOutput()
        server.sendData(streamID: 1, bytes: [UInt8](repeating: 0, count: 100_000), endStream: true)
        let frames = server.outputFrames()
        #expect(dataBytes(frames).total == 100_000)
        #expect(frames.count == 7)   // ceil(100000 / 16384)
    }

    @Test func sendingIsFairAcrossStreams() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, endStream: true) + client.headers(3, endStream: true))
        server.sendData(streamID: 1, bytes: [UInt8](repeating: 1, count: 65535), endStream: true)
        server.sendData(streamID: 3, bytes: [UInt8](repeating: 3, count: 100), endStream: true)
        // Stream 1 took the whole connection window first; stream 3 waits, then goes before stream 1's next bytes.
        _ = server.takeOutput()
        _ = server.feed(frameBytes(0, .windowUpdate(increment: 200)))
        let frames = server.outputFrames()
        #expect(frames.first?.streamID == 3)
    }

    @Test func receiveWindowCreditIsReturned() {
        var client = FakeClient()
        var limits = HTTP2Limits()
        limits.initialWindowSize = 65535
        limits.connectionWindowSize = 65535
        let server = handshakenServer(limits)
        _ = server.feed(client.headers(1))
        let chunk = [UInt8](repeating: 0, count: 16384)
        _ = server.feed(frameBytes(1, .data(bytes: chunk, endStream: false, padding: nil))
            + frameBytes(1, .data(bytes: chunk, endStream: false, padding: nil)))
        let frames = server.outputFrames()
        #expect(frames.contains(Frame(streamID: 0, payload: .windowUpdate(increment: 32768))))
        #expect(frames.contains(Frame(streamID: 1, payload: .windowUpdate(increment: 32768))))
        // The peer can keep sending indefinitely as long as credit comes back.
        for _ in 0..<100 {
            let events = server.feed(frameBytes(1, .data(bytes: chunk, endStream: false, padding: nil)))
            #expect(events.count == 1)
        }
        #expect(!server.isDraining)
    }

    @Test func exceedingOurWindowIsFlowControlError() {
        var client = FakeClient()
        var limits = HTTP2Limits()
        limits.initialWindowSize = 1000
        let server = handshakenServer(limits)
        _ = server.feed(client.headers(1))
        let events = server.feed(frameBytes(1, .data(bytes: [UInt8](repeating: 0, count: 1001), endStream: false,
                                                     padding: nil)))
        #expect(isStreamError(events, 1, .flowControlError))

        // Padding counts against the window too (§6.1).
        let server2 = handshakenServer(limits)
        var client2 = FakeClient()
        _ = server2.feed(client2.headers(1))
        let padded = server2.feed(frameBytes(1, .data(bytes: [UInt8](repeating: 0, count: 900), endStream: false,
                                                      padding: 100)))
        #expect(isStreamError(padded, 1, .flowControlError))
    }

    @Test func windowUpdateErrors() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1) + client.headers(3))
        #expect(isStreamError(server.feed(frameBytes(1, .windowUpdate(increment: 0))), 1, .protocolError))
        #expect(isStreamError(server.feed(frameBytes(3, .windowUpdate(increment: 0x7fff_ffff))), 3, .flowControlError))
        #expect(isConnectionError(server.feed(frameBytes(0, .windowUpdate(increment: 0x7fff_ffff))), .flowControlError))
    }

    @Test func slowReaderOverQueuedOutputLimitIsCut() {
        var client = FakeClient()
        var limits = HTTP2Limits()
        limits.maxQueuedOutputBytes = 100_000
        let server = handshakenServer(limits)
        _ = server.feed(client.headers(1, endStream: true))
        server.sendData(streamID: 1, bytes: [UInt8](repeating: 0, count: 150_000), endStream: false)
        #expect(!server.didFail)
        server.sendData(streamID: 1, bytes: [UInt8](repeating: 0, count: 60_000), endStream: false)
        #expect(server.didFail)
        #expect(goAwayCode(server.outputFrames()) == .enhanceYourCalm)
        #expect(isConnectionError(server.feed([]), .enhanceYourCalm))
    }
}
