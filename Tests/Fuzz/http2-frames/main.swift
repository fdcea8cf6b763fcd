// libFuzzer harness for the HTTP/2 frame codec. Not a SwiftPM target: built by `scripts/fuzz http2-frames SECONDS`.
// Uses only HTTP2's public API.
// Input layout: one octet choosing the feed size (1 + octet bytes per append), then raw frame bytes.
//
// Beyond "never crash": feeding in pieces gives exactly the frames (and the connection error) of feeding the whole
// input at once, and every frame read re-serializes to bytes that read back as the same frame.

#if canImport(HTTP2)
import HTTP2
#endif

func check(_ condition: Bool, _ message: String) {
    if !condition { fatalError("HTTP/2 frame fuzz invariant: \(message)") }
}

/// Reads all frames; stream-level framing errors skip the frame, a connection error stops reading.
func readFrames(_ bytes: ArraySlice<UInt8>, chunk: Int) -> (frames: [Frame], streamErrors: Int, error: FrameError?) {
    var reader = FrameReader()
    var frames: [Frame] = []
    var streamErrors = 0
    var offset = bytes.startIndex
    while offset < bytes.endIndex {
        let end = min(bytes.endIndex, offset + chunk)
        reader.append(bytes[offset..<end])
        offset = end
        while true {
            do {
                guard let frame = try reader.nextFrame() else { break }
                frames.append(frame)
            } catch {
                if case .connection = error { return (frames, streamErrors, error) }
                streamErrors += 1
            }
        }
    }
    return (frames, streamErrors, nil)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2Frames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let chunk = Int(input[0]) + 1
    let pieces = readFrames(input[1...], chunk: chunk)
    let whole = readFrames(input[1...], chunk: input.count)
    check(pieces.frames == whole.frames, "frames depend on how the input was split")
    check(pieces.streamErrors == whole.streamErrors, "stream errors depend on the split")
    check(pieces.error == whole.error, "connection error depends on the split")
    for frame in whole.frames {
        var reader = FrameReader()
        let bytes = frame.serialized()
        reader.append(bytes[...])
        let again = try? reader.nextFrame()
        check(again == frame, "frame does not round-trip: \(frame)")
        check(reader.bufferedByteCount == 0, "serialized frame has trailing bytes")
    }
    return 0
}
