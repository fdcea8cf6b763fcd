import HPACK
import Testing
@testable import HTTP2

@Suite struct DefenceTests {
    /// A server allowing 10 early resets among the last 100 streams.
    static func rapidResetServer() -> HTTP2Connection {
        var limits = HTTP2Limits()
        limits.maxResetsPerWindow = 10
        limits.rapidResetWindow = 100
        return handshakenServer(limits)
    }

    @Test func rapidResetCrossesItsBudget() {
        var client = FakeClient()
        let server = Self.rapidResetServer()
        var id: UInt32 = 1
        for _ in 0..<10 {
            let events = server.feed(client.headers(id) + frameBytes(id, .rstStream(.cancel)))
            #expect(!isConnectionError(events, .enhanceYourCalm))
            id += 2
        }
        let events = server.feed(client.headers(id) + frameBytes(id, .rstStream(.cancel)))
        #expect(isConnectionError(events, .enhanceYourCalm))
        #expect(goAwayCode(server.outputFrames()) == .enhanceYourCalm)
    }

    @Test func deadlineCancellationsWithTimesPassedInDoNotCount() {
        var client = FakeClient()
        let server = Self.rapidResetServer()
        var now: UInt64 = 1_000_000_000
        var id: UInt32 = 1
        // A backend outage: every call is cancelled by the client at its 3 s deadline, never answered.
        for _ in 0..<50 {
            _ = server.receive(client.headers(id, endStream: true)[...], now: now)
            now += 3_000_000_000
            #expect(!isConnectionError(server.receive(frameBytes(id, .rstStream(.cancel))[...], now: now), .enhanceYourCalm))
            id += 2
        }
        // Immediate resets still trip the defence.
        var tripped = false
        for _ in 0..<11 {
            let events = server.receive((client.headers(id, endStream: true) + frameBytes(id, .rstStream(.cancel)))[...],
                                        now: now)
            tripped = tripped || isConnectionError(events, .enhanceYourCalm)
            id += 2
            now += 1000
        }
        #expect(tripped)
    }

    @Test func resetsAfterAnAnswerAndOldResetsDoNotCount() {
        var limits = HTTP2Limits()
        limits.maxResetsPerWindow = 5
        limits.rapidResetWindow = 20
        var client = FakeClient()
        let server = handshakenServer(limits)
        var id: UInt32 = 1
        // Cancelling after we answered (a deadline hit mid-response) is not the attack.
        for _ in 0..<50 {
            _ = server.feed(client.headers(id))
            server.sendHeaders(streamID: id, fields: okStatus, endStream: false)
            #expect(!isConnectionError(server.feed(frameBytes(id, .rstStream(.cancel))), .enhanceYourCalm))
            id += 2
        }
        // Early resets spread out by at least `rapidResetWindow / maxResetsPerWindow` good streams stay within budget.
        for round in 0..<30 {
            let pattern = round % 4 == 0
            _ = server.feed(client.headers(id))
            if pattern {
                #expect(!isConnectionError(server.feed(frameBytes(id, .rstStream(.cancel))), .enhanceYourCalm))
            } else {
                server.sendHeaders(streamID: id, fields: okStatus, endStream: true)
                _ = server.feed(frameBytes(id, .data(bytes: [], endStream: true, padding: nil)))
            }
            id += 2
        }
        #expect(!server.isDraining)
    }

    @Test func pingFloodWithoutReadingIsCut() {
        var limits = HTTP2Limits()
        limits.maxQueuedControlFrames = 50
        let server = handshakenServer(limits)
        var flood: [UInt8] = []
        for i in 0..<50 { flood += frameBytes(0, .ping(opaque: UInt64(i), ack: false)) }
        #expect(server.feed(flood).isEmpty)
        #expect(isConnectionError(server.feed(frameBytes(0, .ping(opaque: 99, ack: false))), .enhanceYourCalm))
    }

    @Test func pingsFromAReadingPeerAreFine() {
        var limits = HTTP2Limits()
        limits.maxQueuedControlFrames = 50
        let server = handshakenServer(limits)
        for i in 0..<500 {
            #expect(server.feed(frameBytes(0, .ping(opaque: UInt64(i), ack: false))).isEmpty)
            _ = server.takeOutput()
        }
    }

    @Test func settingsFloodIsCut() {
        var limits = HTTP2Limits()
        limits.maxQueuedControlFrames = 20
        let server = handshakenServer(limits)
        var flood: [UInt8] = []
        for _ in 0..<21 { flood += frameBytes(0, .settings([HTTP2Setting(id: 4, value: 65535)], ack: false)) }
        #expect(isConnectionError(server.feed(flood), .enhanceYourCalm))
    }

    @Test func refusedStreamFloodIsCut() {
        var limits = HTTP2Limits()
        limits.maxConcurrentStreams = 1
        limits.maxQueuedControlFrames = 30
        var client = FakeClient()
        let server = handshakenServer(limits)
        var bytes = client.headers(1)
        for i in 1...31 { bytes += client.headers(UInt32(1 + 2 * i)) }
        #expect(isConnectionError(server.feed(bytes), .enhanceYourCalm))
    }

    @Test func emptyDataFloodIsCut() {
        var limits = HTTP2Limits()
        limits.maxConsecutiveEmptyFrames = 30
        var client = FakeClient()
        let server = handshakenServer(limits)
        _ = server.feed(client.headers(1))
        var bytes: [UInt8] = []
        for _ in 0..<30 { bytes += frameBytes(1, .data(bytes: [], endStream: false, padding: nil)) }
        #expect(!server.feed(bytes).contains { if case .connectionError = $0 { true } else { false } })
        // Real payload resets the count; 31 empty frames in a row do not pass.
        _ = server.feed(frameBytes(1, .data(bytes: [1], endStream: false, padding: nil)))
        #expect(!server.isDraining)
        #expect(isConnectionError(server.feed(bytes + frameBytes(1, .data(bytes: [], endStream: false, padding: nil))),
                                  .enhanceYourCalm))
    }

    @Test func emptyContinuationAndUnknownFloodIsCut() {
        var limits = HTTP2Limits()
        limits.maxConsecutiveEmptyFrames = 10
        limits.maxContinuationFrames = 1000
        let server = handshakenServer(limits)
        var bytes = frameBytes(1, .headers(block: [], endStream: true, endHeaders: false, priority: nil, padding: nil))
        for _ in 0..<12 { bytes += frameBytes(1, .continuation(block: [], endHeaders: false)) }
        #expect(isConnectionError(server.feed(bytes), .enhanceYourCalm))

        let server2 = handshakenServer(limits)
        var unknown: [UInt8] = []
        for _ in 0..<11 { unknown += frameBytes(0, .unknown(type: 0x77, flags: 0, payload: [])) }
        #expect(isConnectionError(server2.feed(unknown), .enhanceYourCalm))
    }

    @Test func oversizedFrameIsFrameSizeError() {
        let server = handshakenServer()
        var bytes: [UInt8] = []
        FrameWriter.appendHeader(into: &bytes, length: 16385, type: 0, flags: 0, streamID: 1)
        #expect(isConnectionError(server.feed(bytes), .frameSizeError))
        #expect(goAwayCode(server.outputFrames()) == .frameSizeError)
    }
}
