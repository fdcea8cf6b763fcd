import HPACK
import Testing
@testable import HTTP2

let okStatus = [HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc")]
let okTrailers = [HeaderField(name: "grpc-status", value: "0")]

@Suite struct StreamStateTests {
    @Test func unaryCallLifecycle() {
        var client = FakeClient()
        let server = handshakenServer()
        var events = server.feed(client.headers(1))
        #expect(events == [.headers(streamID: 1, fields: FakeClient.requestFields, endStream: false)])
        events = server.feed(frameBytes(1, .data(bytes: [0, 0, 0, 0, 0], endStream: true, padding: nil)))
        #expect(events == [.data(streamID: 1, bytes: [0, 0, 0, 0, 0], endStream: true)])
        #expect(server.openStreamCount == 1)   // half-closed (remote)
        server.sendHeaders(streamID: 1, fields: okStatus, endStream: false)
        server.sendData(streamID: 1, bytes: [0, 0, 0, 0, 1, 9], endStream: false)
        server.sendHeaders(streamID: 1, fields: okTrailers, endStream: true)
        #expect(server.openStreamCount == 0)
        let frames = server.outputFrames()
        #expect(frames.count == 3)
        guard frames.count == 3 else { return }
        guard case .headers(_, false, true, nil, nil) = frames[0].payload,
              case .data([0, 0, 0, 0, 1, 9], false, nil) = frames[1].payload,
              case .headers(_, true, true, nil, nil) = frames[2].payload else {
            Issue.record("unexpected frames \(frames)")
            return
        }
        // Late WINDOW_UPDATE and RST_STREAM for the finished stream are ignored.
        events = server.feed(frameBytes(1, .windowUpdate(increment: 10)) + frameBytes(1, .rstStream(.cancel)))
        #expect(events.isEmpty)
        #expect(server.outputFrames().isEmpty)
    }

    @Test func evenStreamIDIsProtocolError() {
        var client = FakeClient()
        let server = handshakenServer()
        #expect(isConnectionError(server.feed(client.headers(2)), .protocolError))
    }

    @Test func decreasingStreamIDIsProtocolError() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(5, endStream: true))
        #expect(isConnectionError(server.feed(client.headers(3)), .protocolError))
    }

    @Test func headersOnClosedStreamIsStreamClosed() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        _ = server.feed(frameBytes(1, .rstStream(.cancel)))
        #expect(isConnectionError(server.feed(client.headers(1)), .streamClosed))
    }

    @Test func dataOnIdleStreamIsProtocolError() {
        let server = handshakenServer()
        #expect(isConnectionError(server.feed(frameBytes(1, .data(bytes: [1], endStream: false, padding: nil))),
                                  .protocolError))
    }

    @Test func framesOnIdleStreamAreProtocolErrors() {
        for frame in [frameBytes(9, .windowUpdate(increment: 1)), frameBytes(9, .rstStream(.cancel))] {
            let server = handshakenServer()
            #expect(isConnectionError(server.feed(frame), .protocolError))
        }
    }

    @Test func dataAfterEndStreamIsStreamClosed() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, endStream: true))
        let events = server.feed(frameBytes(1, .data(bytes: [1], endStream: false, padding: nil)))
        #expect(isStreamError(events, 1, .streamClosed))
        #expect(rstCodes(server.outputFrames()) == [1: .streamClosed])
        #expect(!server.isDraining)
    }

    @Test func dataOnStreamClosedNormallyIsStreamClosedWithoutEvent() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, endStream: true))
        server.sendHeaders(streamID: 1, fields: okStatus, endStream: true)
        _ = server.takeOutput()
        let events = server.feed(frameBytes(1, .data(bytes: [1], endStream: false, padding: nil)))
        #expect(events.isEmpty)
        #expect(rstCodes(server.outputFrames()) == [1: .streamClosed])
    }

    @Test func framesAfterOurResetAreIgnored() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        server.resetStream(streamID: 1, code: .cancel)
        #expect(rstCodes(server.outputFrames()) == [1: .cancel])
        let events = server.feed(frameBytes(1, .data(bytes: [1, 2], endStream: false, padding: nil))
            + client.headers(1, [HeaderField(name: "grpc-status", value: "0")], endStream: true)
            + frameBytes(1, .windowUpdate(increment: 5)))
        #expect(events.isEmpty)
        #expect(server.outputFrames().isEmpty)
        #expect(!server.isDraining)
    }

    @Test func peerResetSurfacesAndLaterFramesAreStreamClosed() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        #expect(server.feed(frameBytes(1, .rstStream(.cancel))) == [.streamReset(streamID: 1, code: .cancel)])
        #expect(server.openStreamCount == 0)
        server.sendHeaders(streamID: 1, fields: okStatus, endStream: true)   // the caller's late answer is dropped
        #expect(server.outputFrames().isEmpty)
        _ = server.feed(frameBytes(1, .data(bytes: [1], endStream: false, padding: nil)))
        #expect(rstCodes(server.outputFrames()) == [1: .streamClosed])
    }

    @Test func trailersWithoutEndStreamAreStreamError() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        let events = server.feed(client.headers(1, [HeaderField(name: "x", value: "y")], endStream: false))
        #expect(isStreamError(events, 1, .protocolError))
    }

    @Test func requestTrailersEndTheStream() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1))
        let trailers = [HeaderField(name: "x-checksum", value: "1")]
        #expect(server.feed(client.headers(1, trailers, endStream: true))
                == [.headers(streamID: 1, fields: trailers, endStream: true)])
        #expect(isStreamError(server.feed(frameBytes(1, .data(bytes: [1], endStream: true, padding: nil))), 1,
                              .streamClosed))
    }

    @Test func selfDependencyIsStreamProtocolError() {
        var client = FakeClient()
        let server = handshakenServer()
        let headers = frameBytes(3, .headers(block: client.block()[...], endStream: true, endHeaders: true,
                                             priority: PriorityInfo(exclusive: false, dependency: 3, weight: 1),
                                             padding: nil))
        #expect(isStreamError(server.feed(headers), 3, .protocolError))
        let priority = frameBytes(5, .priority(PriorityInfo(exclusive: false, dependency: 5, weight: 1)))
        _ = server.feed(priority)
        #expect(rstCodes(server.outputFrames()) == [3: .protocolError, 5: .protocolError])
        #expect(!server.isDraining)
    }

    @Test func excessStreamsAreRefused() {
        var limits = HTTP2Limits()
        limits.maxConcurrentStreams = 2
        var client = FakeClient()
        let server = handshakenServer(limits)
        let events = server.feed(client.headers(1) + client.headers(3) + client.headers(5))
        #expect(events.count == 3)
        #expect(isStreamError(events, 5, .refusedStream))
        #expect(rstCodes(server.outputFrames()) == [5: .refusedStream])
        server.resetStream(streamID: 1, code: .cancel)
        #expect(server.feed(client.headers(7)).count == 1)   // room again
    }

    @Test func paddedHeadersAndDataAreAccepted() {
        var client = FakeClient()
        let server = handshakenServer()
        let events = server.feed(frameBytes(1, .headers(block: client.block()[...], endStream: false, endHeaders: true,
                                                        priority: nil, padding: 10))
            + frameBytes(1, .data(bytes: [7], endStream: true, padding: 3)))
        #expect(events == [.headers(streamID: 1, fields: FakeClient.requestFields, endStream: false),
                           .data(streamID: 1, bytes: [7], endStream: true)])
    }
}

@Suite struct RequestValidationTests {
    static let base = FakeClient.requestFields

    static let invalid: [[HeaderField]] = [
        [HeaderField(name: ":method", value: "POST"), HeaderField(name: ":path", value: "/x")],        // no :scheme
        base + [HeaderField(name: "Content-Type", value: "x")],                                          // uppercase
        base + [HeaderField(name: "connection", value: "keep-alive")],
        base + [HeaderField(name: "transfer-encoding", value: "chunked")],
        base + [HeaderField(name: "te", value: "gzip")],
        base + [HeaderField(name: ":status", value: "200")],                                             // response pseudo
        base + [HeaderField(name: ":foo", value: "x")],
        [HeaderField(name: "x", value: "y")] + base,                                                    // pseudo after regular
        base + [HeaderField(name: ":path", value: "/again")],                                            // duplicate
        base + [HeaderField(name: "x", value: "a\r\nb")],
        base + [HeaderField(name: "x", value: " padded")],
        base + [HeaderField(name: "bad name", value: "v")],
        [HeaderField(name: ":method", value: "POST"), HeaderField(name: ":scheme", value: "http"),
         HeaderField(name: ":path", value: "")],
    ]

    @Test(arguments: invalid) func malformedRequestIsStreamProtocolError(_ fields: [HeaderField]) {
        var client = FakeClient()
        let server = handshakenServer()
        let events = server.feed(client.headers(1, fields, endStream: true))
        #expect(isStreamError(events, 1, .protocolError))
        #expect(rstCodes(server.outputFrames()) == [1: .protocolError])
        // The connection carries on: a good request on the next stream works.
        #expect(server.feed(client.headers(3, endStream: true)).count == 1)
    }

    @Test func contentLengthMismatchIsMalformed() {
        var client = FakeClient()
        let server = handshakenServer()
        _ = server.feed(client.headers(1, Self.base + [HeaderField(name: "content-length", value: "3")]))
        let events = server.feed(frameBytes(1, .data(bytes: [1, 2], endStream: true, padding: nil)))
        #expect(isStreamError(events, 1, .protocolError))
    }
}

@Suite struct HeaderBlockTests {
    @Test func continuationReassembly() {
        var client = FakeClient()
        let server = handshakenServer()
        let block = client.block()
        let bytes = frameBytes(1, .headers(block: block[0..<3], endStream: true, endHeaders: false,
                                           priority: nil, padding: nil))
            + frameBytes(1, .continuation(block: block[3..<10], endHeaders: false))
            + frameBytes(1, .continuation(block: block[10...], endHeaders: true))
        #expect(server.feed(bytes) == [.headers(streamID: 1, fields: FakeClient.requestFields, endStream: true)])
    }

    @Test func interleavedFrameIsProtocolError() {
        var client = FakeClient()
        let server = handshakenServer()
        let block = client.block()
        let start = frameBytes(1, .headers(block: block[0..<3], endStream: true, endHeaders: false,
                                           priority: nil, padding: nil))
        for intruder in [frameBytes(0, .ping(opaque: 1, ack: false)),
                         frameBytes(3, .continuation(block: block[3...], endHeaders: true)),
                         frameBytes(1, .data(bytes: [], endStream: true, padding: nil))] {
            let fresh = handshakenServer()
            #expect(isConnectionError(fresh.feed(start + intruder), .protocolError))
        }
        #expect(isConnectionError(server.feed(frameBytes(1, .continuation(block: block[...], endHeaders: true))),
                                  .protocolError))   // CONTINUATION with no block open
    }

    @Test func continuationFloodIsCut() {
        let server = handshakenServer()
        var bytes = frameBytes(1, .headers(block: [0], endStream: true, endHeaders: false, priority: nil, padding: nil))
        for _ in 0..<20 { bytes += frameBytes(1, .continuation(block: [0, 0, 0, 0], endHeaders: false)) }
        #expect(isConnectionError(server.feed(bytes), .enhanceYourCalm))
    }

    @Test func oversizedHeaderBlockIsCut() {
        var limits = HTTP2Limits()
        limits.maxHeaderBlockBytes = 20000
        let server = handshakenServer(limits)
        let big = [UInt8](repeating: 0, count: 16000)
        let bytes = frameBytes(1, .headers(block: big[...], endStream: true, endHeaders: false, priority: nil, padding: nil))
            + frameBytes(1, .continuation(block: big[...], endHeaders: false))
        #expect(isConnectionError(server.feed(bytes), .enhanceYourCalm))
    }

    @Test func oversizedHeaderListIsStreamErrorAndHPACKStaysInSync() {
        var limits = HTTP2Limits()
        limits.maxHeaderListSize = 1000
        var client = FakeClient()
        let server = handshakenServer(limits)
        let big = FakeClient.requestFields + [HeaderField(name: "x-big", value: String(repeating: "a", count: 2000))]
        let events = server.feed(client.headers(1, big, endStream: true))
        #expect(isStreamError(events, 1, .enhanceYourCalm))
        #expect(rstCodes(server.outputFrames()) == [1: .enhanceYourCalm])
        // The next request reuses dynamic-table entries the oversized block inserted.
        #expect(server.feed(client.headers(3, endStream: true))
                == [.headers(streamID: 3, fields: FakeClient.requestFields, endStream: true)])
    }

    @Test func badHPACKIsCompressionError() {
        let server = handshakenServer()
        // 0xff ... : an indexed field with an index far past both tables / truncated integer.
        let events = server.feed(frameBytes(1, .headers(block: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], endStream: true,
                                                        endHeaders: true, priority: nil, padding: nil)))
        #expect(isConnectionError(events, .compressionError))
        #expect(goAwayCode(server.outputFrames()) == .compressionError)
    }
}
