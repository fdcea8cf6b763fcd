// libFuzzer harness for a whole server-side HTTP/2 connection fed arbitrary bytes in memory (scripts/fuzz
// http2-connection SECONDS). Input byte 0: bit 0 set = prefix the client preface (so the fuzzer mostly explores
// frames, not the preface check); bits 1-5 = chunk size the rest is delivered in; bit 6 set = the rest is frame
// records [type][flags][stream id][length: 2 bytes][payload] that are written as well-formed frame headers (so
// mutations explore the connection's state machine instead of breaking frame lengths). Requests that complete get a
// gRPC-shaped answer (headers, data, trailers) so the send side and flow control run too. The connection must
// never trap, never report a stream above its concurrency limit, and keep its queued output bounded.
import HPACK
import HTTP2

let responseHeaders = [HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc")]
let trailers = [HeaderField(name: "grpc-status", value: "0")]
let responseBody = [UInt8](repeating: 0x5A, count: 300)

/// Frame records -> frames with correct 9-byte headers; a record cut short keeps what is there.
func framesFromRecords(_ records: ArraySlice<UInt8>) -> [UInt8] {
    var out: [UInt8] = []
    var index = records.startIndex
    while records.endIndex - index >= 5 {
        let type = records[index], flags = records[index + 1], streamID = UInt32(records[index + 2])
        let length = Int(records[index + 3]) << 8 | Int(records[index + 4])
        index += 5
        let payload = records[index..<min(index + length, records.endIndex)]
        index += payload.count
        FrameWriter.appendHeader(into: &out, length: payload.count, type: type, flags: flags, streamID: streamID)
        out.append(contentsOf: payload)
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let control = input[0]
    let chunkSize = Int((control >> 1) & 0x1F) * 7 + 1
    let body = control & 0x40 != 0 ? framesFromRecords(input[1...]) : Array(input[1...])
    let stream = (control & 1 == 1 ? HTTP2Constants.clientPreface : []) + body

    let limits = HTTP2Limits()
    let connection = HTTP2Connection(role: .server, limits: limits)
    var outputBytes = connection.takeOutput().count
    var offset = 0
    var closed = false
    while offset < stream.count && !closed {
        let end = min(offset + chunkSize, stream.count)
        let events = connection.receive(stream[offset..<end])
        offset = end
        for event in events {
            switch event {
            case .headers(let streamID, _, true), .data(let streamID, _, true):
                connection.sendHeaders(streamID: streamID, fields: responseHeaders, endStream: false)
                connection.sendData(streamID: streamID, bytes: responseBody, endStream: false)
                connection.sendHeaders(streamID: streamID, fields: trailers, endStream: true)
            case .connectionError:
                closed = true  // the server flushes its GOAWAY and closes the socket
            default:
                break
            }
        }
        guard connection.openStreamCount <= limits.maxConcurrentStreams else {
            fatalError("\(connection.openStreamCount) open streams exceed the limit \(limits.maxConcurrentStreams)")
        }
        guard connection.queuedOutputBytes <= limits.maxQueuedOutputBytes + responseBody.count else {
            fatalError("queued output \(connection.queuedOutputBytes) beyond the limit")
        }
        outputBytes += connection.takeOutput().count
    }
    // Input after the connection failed must be ignored harmlessly.
    if closed {
        _ = connection.receive(input[...])
        _ = connection.takeOutput()
    }
    _ = outputBytes
    return 0
}
