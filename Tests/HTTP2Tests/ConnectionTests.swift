import HPACK
import Testing
@testable import HTTP2

@Suite struct ConnectionStartTests {
    @Test func serverStartsWithSettingsAndWindowUpdate() {
        let server = HTTP2Connection(role: .server)
        let frames = server.outputFrames()
        #expect(frames.count == 2)
        guard case let .settings(settings, false) = frames.first?.payload else {
            Issue.record("first frame is not SETTINGS")
            return
        }
        #expect(settings.contains(HTTP2Setting(id: HTTP2Setting.maxConcurrentStreams, value: 128)))
        #expect(settings.contains(HTTP2Setting(id: HTTP2Setting.initialWindowSize, value: 1 << 20)))
        #expect(settings.contains(HTTP2Setting(id: HTTP2Setting.maxHeaderListSize, value: 16384)))
        #expect(frames.last == Frame(streamID: 0, payload: .windowUpdate(increment: UInt32((1 << 24) - 65535))))
    }

    @Test func clientStartsWithPreface() {
        let client = HTTP2Connection(role: .client)
        let out = client.takeOutput()
        #expect(Array(out.prefix(24)) == HTTP2Constants.clientPreface)
        let frames = parseFrames(Array(out.dropFirst(24)))
        guard case let .settings(settings, false) = frames.first?.payload else {
            Issue.record("no SETTINGS after the preface")
            return
        }
        #expect(settings.contains(HTTP2Setting(id: HTTP2Setting.enablePush, value: 0)))
    }

    @Test func badPrefaceIsGoAwayProtocolError() {
        let server = HTTP2Connection(role: .server)
        _ = server.takeOutput()
        let events = server.feed(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(isConnectionError(events, .protocolError))
        #expect(goAwayCode(server.outputFrames()) == .protocolError)
        #expect(!server.receivedPreface)
        #expect(server.feed(HTTP2Constants.clientPreface).isEmpty)   // input ignored after a connection error
    }

    @Test func prefaceByteByByte() {
        let server = HTTP2Connection(role: .server)
        for byte in HTTP2Constants.clientPreface.dropLast() {
            #expect(server.feed([byte]).isEmpty)
            #expect(!server.receivedPreface)
        }
        _ = server.feed([HTTP2Constants.clientPreface.last ?? 0])
        #expect(server.receivedPreface)
    }

    @Test func firstFrameMustBeSettings() {
        let server = HTTP2Connection(role: .server)
        _ = server.takeOutput()
        let events = server.feed(HTTP2Constants.clientPreface + frameBytes(0, .ping(opaque: 1, ack: false)))
        #expect(isConnectionError(events, .protocolError))
        // Also when the first frame is one the reader itself rejects at stream level (PRIORITY of length 4).
        let server2 = HTTP2Connection(role: .server)
        var bad = HTTP2Constants.clientPreface
        FrameWriter.appendHeader(into: &bad, length: 4, type: FrameType.priority.rawValue, flags: 0, streamID: 1)
        let events2 = server2.feed(bad + [0, 0, 0, 0])
        #expect(isConnectionError(events2, .protocolError))
    }

    @Test func settingsAreAckedAndAcksSurface() {
        let server = HTTP2Connection(role: .server)
        _ = server.takeOutput()
        var events = server.feed(HTTP2Constants.clientPreface + frameBytes(0, .settings([
            HTTP2Setting(id: 0xfe03, value: 1), HTTP2Setting(id: HTTP2Setting.enablePush, value: 0),
        ], ack: false)))
        #expect(events.isEmpty)
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .settings([], ack: true))])
        events = server.feed(frameBytes(0, .settings([], ack: true)))
        #expect(events == [.settingsAcked])
        // A second, unsolicited ACK is not reported again.
        #expect(server.feed(frameBytes(0, .settings([], ack: true))).isEmpty)
    }

    struct BadSetting: Sendable, CustomTestStringConvertible {
        var setting: HTTP2Setting
        var code: HTTP2ErrorCode
        var testDescription: String { "setting \(setting.id)=\(setting.value)" }
    }

    @Test(arguments: [
        BadSetting(setting: HTTP2Setting(id: HTTP2Setting.enablePush, value: 2), code: .protocolError),
        BadSetting(setting: HTTP2Setting(id: HTTP2Setting.initialWindowSize, value: 1 << 31), code: .flowControlError),
        BadSetting(setting: HTTP2Setting(id: HTTP2Setting.maxFrameSize, value: 16383), code: .protocolError),
        BadSetting(setting: HTTP2Setting(id: HTTP2Setting.maxFrameSize, value: 1 << 24), code: .protocolError),
    ])
    func invalidSettingsAreConnectionErrors(_ bad: BadSetting) {
        let server = handshakenServer()
        let events = server.feed(frameBytes(0, .settings([bad.setting], ack: false)))
        #expect(isConnectionError(events, bad.code))
        #expect(goAwayCode(server.outputFrames()) == bad.code)
    }

    @Test func pingIsAckedWithSameOpaque() {
        let server = handshakenServer()
        #expect(server.feed(frameBytes(0, .ping(opaque: 0x0204_1010_090e_0707, ack: false))).isEmpty)
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .ping(opaque: 0x0204_1010_090e_0707, ack: true))])
        server.ping(opaque: 7)
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .ping(opaque: 7, ack: false))])
        #expect(server.feed(frameBytes(0, .ping(opaque: 7, ack: true))) == [.pingAck(opaque: 7)])
    }

    @Test func unknownFramesAndPriorityAreIgnored() {
        let server = handshakenServer()
        let events = server.feed(frameBytes(0, .unknown(type: 0xee, flags: 0xff, payload: [1, 2]))
            + frameBytes(3, .priority(PriorityInfo(exclusive: false, dependency: 1, weight: 1))))
        #expect(events.isEmpty)
        #expect(server.outputFrames().isEmpty)
        #expect(!server.isDraining)
    }

    @Test func pushPromiseFromClientIsProtocolError() {
        let server = handshakenServer()
        let events = server.feed(frameBytes(1, .pushPromise(promisedStreamID: 2, block: [], endHeaders: true,
                                                             padding: nil)))
        #expect(isConnectionError(events, .protocolError))
    }
}

@Suite struct GoAwayTests {
    @Test func gracefulShutdownSendsTwoGoAways() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, endStream: true))
        server.beginGracefulShutdown()
        #expect(server.isDraining)
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .goAway(lastStreamID: 0x7fff_ffff, code: .noError,
                                                                              debugData: []))])
        // A straggler opened before the client saw the first GOAWAY is still served.
        #expect(server.feed(client.headers(3, endStream: true)).count == 1)
        server.beginGracefulShutdown()
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .goAway(lastStreamID: 3, code: .noError,
                                                                              debugData: []))])
        // Streams above the final last-stream-id are ignored, but their headers still go through HPACK.
        #expect(server.feed(client.headers(5, endStream: true)).isEmpty)
        #expect(server.feed(client.headers(7, endStream: true)).isEmpty)
        #expect(server.openStreamCount == 2)
        // Existing streams still complete.
        server.sendHeaders(streamID: 1, fields: [HeaderField(name: ":status", value: "200")], endStream: true)
        #expect(server.openStreamCount == 1)
    }

    @Test func shutdownBeforeThePeerSettingsStillCompletesTheHandshake() {
        var client = FakeClient()
        let server = HTTP2Connection(role: .server)
        _ = server.takeOutput()
        server.beginGracefulShutdown()
        #expect(server.isDraining && !server.receivedPreface)
        _ = server.takeOutput()
        // The preface and SETTINGS are still required and acknowledged; a stream in flight is still served.
        _ = server.feed(Array(HTTP2Constants.clientPreface.prefix(10)))
        #expect(!server.receivedPreface)
        let events = server.feed(Array(HTTP2Constants.clientPreface.dropFirst(10)) + frameBytes(0, .settings([], ack: false))
                                 + client.headers(1, endStream: true))
        #expect(server.receivedPreface && !server.didFail)
        #expect(events.count == 1)
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .settings([], ack: true))])
        server.beginGracefulShutdown()
        #expect(server.outputFrames() == [Frame(streamID: 0, payload: .goAway(lastStreamID: 1, code: .noError,
                                                                              debugData: []))])
        // A GOAWAY from the peer as well keeps the connection draining, not failed.
        #expect(server.feed(frameBytes(0, .goAway(lastStreamID: 0, code: .noError, debugData: []))).count == 1)
        #expect(server.isDraining && !server.didFail && server.openStreamCount == 1)
    }

    @Test func goAwayReceivedSurfaces() {
        let server = handshakenServer()
        let events = server.feed(frameBytes(0, .goAway(lastStreamID: 0, code: .noError, debugData: Array("bye".utf8))))
        #expect(events == [.goAwayReceived(lastStreamID: 0, code: .noError)])
        #expect(server.isDraining)
    }

    @Test func connectionErrorGoAwayNamesLastProcessedStream() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1) + client.headers(5))
        _ = server.takeOutput()
        _ = server.feed(frameBytes(0, .windowUpdate(increment: 0)))
        let frames = server.outputFrames()
        guard case let .goAway(last, code, debug) = frames.first?.payload else {
            Issue.record("no GOAWAY: \(frames)")
            return
        }
        #expect(last == 5 && code == .protocolError && !debug.isEmpty)
        #expect(server.didFail && server.openStreamCount == 0)
    }
}
