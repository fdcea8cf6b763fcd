import HPACK
import Testing
@testable import HTTP2

/// WINDOW_UPDATE increments in the output, by stream id.
private func windowUpdates(_ frames: [Frame]) -> [UInt32: Int] {
    var updates: [UInt32: Int] = [:]
    for frame in frames {
        if case let .windowUpdate(increment) = frame.payload { updates[frame.streamID, default: 0] += Int(increment) }
    }
    return updates
}

/// `count` payload bytes as DATA frames of at most 16384 bytes.
private func dataFrames(_ id: UInt32, count: Int, endStream: Bool = false, padding: Int? = nil) -> [UInt8] {
    var out: [UInt8] = []
    var left = count
    repeat {
        let n = min(left, 16384 - (padding.map { $0 + 1 } ?? 0))
        left -= n
        out += frameBytes(id, .data(bytes: [UInt8](repeating: 7, count: n), endStream: endStream && left == 0,
                                    padding: padding))
    } while left > 0
    return out
}

private func consumptionLimits(stream: Int = 128 << 10, connection: Int = 256 << 10) -> HTTP2Limits {
    var limits = HTTP2Limits()
    limits.creditOnConsumption = true
    limits.initialWindowSize = stream
    limits.connectionWindowSize = connection
    return limits
}

@Suite struct ConsumptionCreditTests {
    @Test func dataThatIsNotConsumedEarnsNoCreditAndTheWindowHolds() {
        var client = FakeClient()
        let server = handshakenServer(consumptionLimits())
        _ = server.feed(client.headers(1) + client.headers(3))
        _ = server.feed(dataFrames(1, count: 100 << 10) + dataFrames(3, count: 100 << 10))
        // The default policy would have returned connection credit at 128 KiB and stream credit at 64 KiB.
        #expect(windowUpdates(server.outputFrames()).isEmpty)
        #expect(server.bufferedInboundBytes == 200 << 10)
        // 56 KiB of connection window is left: 60 KiB more is a flow-control violation.
        _ = server.feed(client.headers(5))
        let events = server.feed(dataFrames(5, count: 60 << 10))
        #expect(events.contains { if case .connectionError(.flowControlError, _) = $0 { true } else { false } })
    }

    @Test func consumingReturnsStreamAndConnectionCredit() {
        var client = FakeClient()
        let server = handshakenServer(consumptionLimits())
        _ = server.feed(client.headers(1) + client.headers(3))
        _ = server.feed(dataFrames(1, count: 100 << 10) + dataFrames(3, count: 100 << 10))
        _ = server.takeOutput()
        // The connection window (56 KiB) is below half its target: consumed bytes go back at once. The stream's
        // credit is batched until it is worth half the stream window.
        server.consume(streamID: 1, bytes: 1000)
        #expect(windowUpdates(server.outputFrames()) == [0: 1000])
        server.consume(streamID: 1, bytes: (100 << 10) - 1000)
        // Stream 1: back to 128 KiB (it holds nothing); connection: 256 KiB minus the 100 KiB stream 3 holds.
        #expect(windowUpdates(server.outputFrames()) == [1: 100 << 10, 0: (100 << 10) - 1000])
        #expect(server.bufferedInboundBytes == 100 << 10)
        // Consuming more than the stream holds is clamped. The connection window is above half again: batched.
        server.consume(streamID: 3, bytes: 1 << 30)
        #expect(windowUpdates(server.outputFrames()) == [3: 100 << 10])
        #expect(server.bufferedInboundBytes == 0)
    }

    @Test func connectionCreditIsBatchedWhileTheWindowIsAboveHalf() {
        var client = FakeClient()
        let server = handshakenServer(consumptionLimits(connection: 1 << 20))
        _ = server.feed(client.headers(1))
        _ = server.feed(dataFrames(1, count: 100 << 10))
        server.consume(streamID: 1, bytes: 100 << 10)
        #expect(windowUpdates(server.outputFrames()) == [1: 100 << 10])
        _ = server.feed(client.headers(3))
        _ = server.feed(dataFrames(3, count: 120 << 10) + dataFrames(1, count: 120 << 10))
        server.consume(streamID: 1, bytes: 120 << 10)
        server.consume(streamID: 3, bytes: 120 << 10)
        // 340 KiB consumed, less than half of 1 MiB, and the window never fell below half: still batched.
        #expect(windowUpdates(server.outputFrames())[0] == nil)
        // 200 KiB more takes the window below half: the 340 KiB consumed so far goes back in one WINDOW_UPDATE.
        _ = server.feed(dataFrames(3, count: 100 << 10) + dataFrames(1, count: 100 << 10))
        #expect(windowUpdates(server.outputFrames())[0] == 340 << 10)
        server.consume(streamID: 1, bytes: 100 << 10)
        #expect(windowUpdates(server.outputFrames())[0] == nil)
        #expect(server.bufferedInboundBytes == 100 << 10)
    }

    @Test func aStreamThatGoesAwayReturnsWhatItHeld() {
        var client = FakeClient()
        let server = handshakenServer(consumptionLimits())
        _ = server.feed(client.headers(1) + client.headers(3))
        _ = server.feed(dataFrames(1, count: 100 << 10) + dataFrames(3, count: 100 << 10))
        _ = server.takeOutput()
        _ = server.feed(frameBytes(1, .rstStream(.cancel)))
        #expect(windowUpdates(server.outputFrames()) == [0: 100 << 10])
        server.resetStream(streamID: 3, code: .enhanceYourCalm)
        #expect(server.bufferedInboundBytes == 0)
        // The window (156 KiB) is back above half its target: this credit waits for more to batch with.
        #expect(windowUpdates(server.outputFrames()).isEmpty)
        // Until DATA takes the window below half again.
        _ = server.feed(client.headers(5))
        _ = server.feed(dataFrames(5, count: 30 << 10))
        #expect(windowUpdates(server.outputFrames())[0] == 100 << 10)
    }

    @Test func paddingAndDataForDroppedStreamsAreCreditedAtOnce() {
        var client = FakeClient()
        let server = handshakenServer(consumptionLimits())
        _ = server.feed(client.headers(1))
        server.resetStream(streamID: 1, code: .cancel)
        _ = server.takeOutput()
        // 150 KiB for a stream we reset: nothing is held, so the window is restored (it fell below half).
        _ = server.feed(dataFrames(1, count: 150 << 10))
        #expect(windowUpdates(server.outputFrames()) == [0: 150 << 10])
        _ = server.feed(client.headers(3))
        _ = server.feed(dataFrames(3, count: 80_000, padding: 255))   // 5 frames, 5 × 256 bytes of padding
        #expect(server.bufferedInboundBytes == 80_000)
        #expect(windowUpdates(server.outputFrames()).isEmpty)   // the padding alone is below the batching threshold
        // Consuming the payload returns it together with the padding, which was never held.
        server.consume(streamID: 3, bytes: 80_000)
        // (The connection's share is batched: its window is still above half.)
        #expect(windowUpdates(server.outputFrames()) == [3: 80_000 + 5 * 256])
    }

    @Test func allowReceivingLetsOneMessagePastTheStreamWindow() {
        var client = FakeClient()
        let server = handshakenServer(consumptionLimits(stream: 64 << 10, connection: 1 << 20))
        _ = server.feed(client.headers(1))
        _ = server.feed(dataFrames(1, count: 16 << 10))
        server.allowReceiving(streamID: 1, bytes: 300 << 10)
        #expect(windowUpdates(server.outputFrames()) == [1: (300 << 10) - (48 << 10)])
        let events = server.feed(dataFrames(1, count: 300 << 10, endStream: true))
        #expect(!events.contains { if case .streamError = $0 { true } else { false } })
        #expect(server.bufferedInboundBytes == 316 << 10)
        // Never lowers a window, and does nothing for streams the peer has finished sending on.
        server.allowReceiving(streamID: 1, bytes: 1 << 20)
        #expect(windowUpdates(server.outputFrames()).isEmpty)
    }

    @Test func defaultPolicyStillCreditsOnArrival() {
        var client = FakeClient()
        var limits = consumptionLimits()
        limits.creditOnConsumption = false
        let server = handshakenServer(limits)
        _ = server.feed(client.headers(1))
        _ = server.feed(dataFrames(1, count: 100 << 10))
        #expect(windowUpdates(server.outputFrames())[1] != nil)
        #expect(server.bufferedInboundBytes == 0)
    }
}

@Suite struct RequestTimeoutTests {
    private func server(timeoutNanos: UInt64) -> HTTP2Connection {
        var limits = HTTP2Limits()
        limits.requestTimeoutNanos = timeoutNanos
        return handshakenServer(limits)
    }

    @Test func aRequestNotCompleteInTimeIsCancelled() {
        var client = FakeClient()
        let second: UInt64 = 1_000_000_000
        let server = server(timeoutNanos: second)
        _ = server.receive(client.headers(1)[...], now: 10 * second)
        _ = server.receive(client.headers(3, endStream: true)[...], now: 10 * second + 100)
        _ = server.takeOutput()
        #expect(server.nextRequestDeadline == 11 * second)   // stream 3's request is complete: no deadline
        #expect(server.expireIncompleteStreams(now: 11 * second - 1).isEmpty)
        let events = server.expireIncompleteStreams(now: 11 * second)
        #expect(events == [.streamError(streamID: 1, code: .cancel, reason: "request not complete within 1000 ms")])
        let frames = server.outputFrames()
        #expect(frames.count == 1 && frames[0].streamID == 1)
        if case let .rstStream(code) = frames.first?.payload { #expect(code == .cancel) } else { Issue.record("no RST") }
        // Stream 3 waits for our answer and stays; the reset stream's late frames are ignored.
        #expect(server.openStreamCount == 1)
        #expect(server.nextRequestDeadline == nil)
        #expect(server.feed(frameBytes(1, .data(bytes: [1], endStream: true, padding: nil))).isEmpty)
    }

    @Test func dataDoesNotExtendTheDeadline() {
        var client = FakeClient()
        let second: UInt64 = 1_000_000_000
        let server = server(timeoutNanos: 2 * second)
        _ = server.receive(client.headers(1)[...], now: second)
        _ = server.receive(frameBytes(1, .data(bytes: [1, 2], endStream: false, padding: nil))[...], now: 2 * second)
        #expect(server.expireIncompleteStreams(now: 3 * second).count == 1)
        #expect(server.openStreamCount == 0)
    }

    @Test func noTimeoutConfiguredExpiresNothing() {
        var client = FakeClient()
        let server = server(timeoutNanos: 0)
        _ = server.receive(client.headers(1)[...], now: 1)
        #expect(server.nextRequestDeadline == nil)
        #expect(server.expireIncompleteStreams(now: UInt64.max).isEmpty)
        #expect(server.openStreamCount == 1)
    }
}
