// libFuzzer harness for the HTTP/2 connection state machine. Not a SwiftPM target: built by
// `scripts/fuzz http2-connection SECONDS`. Uses only HTTP2's public API.
// Input layout: one configuration octet, then the bytes the peer sends (for the server role the 24-byte client
// preface is prepended, so inputs start at the first frame).
//
// Configuration octet:
//   bits 0-1: feed size per receive call (whole input, 1, 7, 100 bytes)
//   bit 2:    client role (we opened streams 1 and 3 first), else server role
//   bit 3:    tight limits (2 streams, 100-byte windows, 2 CONTINUATIONs, small flood budgets)
//   bit 4:    the owner answers every request with a 40000-byte body (flow control on the send side)
//   bit 5:    pass a clock that advances 1 ms per receive call
//
// Beyond "never crash": our output always parses as frames no larger than 16384 bytes; a connection error leaves a
// GOAWAY as the last frame, after which nothing more is read or written; the stream count never exceeds
// MAX_CONCURRENT_STREAMS and blocked output never exceeds maxQueuedOutputBytes while the connection lives.

#if canImport(HTTP2)
import HTTP2
#endif
#if canImport(HPACK)
import HPACK
#endif

func check(_ condition: Bool, _ message: String) {
    if !condition { fatalError("HTTP/2 connection fuzz invariant: \(message)") }
}

/// Parses our output; returns the frames (any framing error in our own output is a bug).
func parseOutput(_ bytes: [UInt8]) -> [Frame] {
    var reader = FrameReader()
    reader.append(bytes[...])
    var frames: [Frame] = []
    do {
        while let frame = try reader.nextFrame() { frames.append(frame) }
    } catch {
        check(false, "our output does not parse: \(error)")
    }
    check(reader.bufferedByteCount == 0, "our output ends inside a frame")
    return frames
}

let request = [HeaderField(name: ":method", value: "POST"), HeaderField(name: ":scheme", value: "http"),
               HeaderField(name: ":path", value: "/v2.KeyManagementService/Status"),
               HeaderField(name: ":authority", value: "localhost"),
               HeaderField(name: "content-type", value: "application/grpc")]
let response = [HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc")]
let trailers = [HeaderField(name: "grpc-status", value: "0")]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2Connection(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let config = data[0]
    let chunk = [Int.max, 1, 7, 100][Int(config & 0x03)]
    let isClient = config & 0x04 != 0
    var limits = HTTP2Limits()
    if config & 0x08 != 0 {
        limits.maxConcurrentStreams = 2
        limits.initialWindowSize = 100
        limits.maxContinuationFrames = 2
        limits.maxQueuedControlFrames = 8
        limits.maxConsecutiveEmptyFrames = 4
        limits.maxResetsPerWindow = 2
        limits.rapidResetWindow = 10
        limits.maxQueuedOutputBytes = 50_000
    }
    let bigAnswers = config & 0x10 != 0
    let useClock = config & 0x20 != 0

    let connection = HTTP2Connection(role: isClient ? .client : .server, limits: limits)
    var output = connection.takeOutput()
    if isClient {
        check(output.starts(with: HTTP2Constants.clientPreface), "client output must start with the preface")
        output.removeFirst(HTTP2Constants.clientPreface.count)
        for _ in 0..<2 {
            if let id = connection.openStream() {
                connection.sendHeaders(streamID: id, fields: request, endStream: false)
                connection.sendData(streamID: id, bytes: [0, 0, 0, 0, 0], endStream: true)
            }
        }
    }
    var input = isClient ? [] : HTTP2Constants.clientPreface
    input += UnsafeBufferPointer(start: data + 1, count: size - 1)

    var failed = false
    var goAwayChecked = false
    var clock: UInt64 = 1
    var offset = 0
    while offset < input.count {
        let end = min(input.count, offset + chunk)
        clock += 1_000_000
        let events = useClock ? connection.receive(input[offset..<end], now: clock)
                              : connection.receive(input[offset..<end])
        offset = end
        if failed {
            check(events.isEmpty, "events after a connection error")
            check(!connection.hasOutput, "output after a connection error")
            continue
        }
        for event in events {
            switch event {
            case .connectionError:
                failed = true
            case let .headers(id, _, endStream) where !isClient:
                if endStream || bigAnswers {
                    connection.sendHeaders(streamID: id, fields: response, endStream: false)
                    connection.sendData(streamID: id, bytes: [UInt8](repeating: 7, count: bigAnswers ? 40_000 : 5),
                                        endStream: false)
                    connection.sendHeaders(streamID: id, fields: trailers, endStream: true)
                }
            case let .data(id, _, true) where !isClient:
                connection.sendHeaders(streamID: id, fields: response, endStream: true)
            default:
                break
            }
        }
        let chunkOutput = connection.takeOutput()
        output += chunkOutput
        check(!failed || connection.didFail, "connection error event without the failed state")
        if connection.didFail {
            // A send call can fail the connection too; the GOAWAY then precedes the event by one call.
            check(connection.isDraining && connection.queuedOutputBytes == 0, "failed connection still holds state")
            if !goAwayChecked {
                guard case .goAway = parseOutput(output).last?.payload else {
                    check(false, "connection error without a final GOAWAY")
                    return 0
                }
                goAwayChecked = true
            } else {
                check(chunkOutput.isEmpty, "output after the final GOAWAY")
            }
        } else {
            if !isClient { check(connection.openStreamCount <= limits.maxConcurrentStreams, "too many streams") }
            check(connection.queuedOutputBytes <= limits.maxQueuedOutputBytes, "blocked output above its limit")
        }
    }
    for frame in parseOutput(output) {
        if case let .data(bytes, _, _) = frame.payload { check(bytes.count <= 16384, "DATA frame above 16384") }
    }
    return 0
}
