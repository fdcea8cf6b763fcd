// libFuzzer harness for the HTTP/2 frame reader (scripts/fuzz http2-frames SECONDS).
// Input: byte 0 picks the chunk size the rest is fed in (any split of the stream must parse the same), the rest is
// the byte stream after the connection preface. Every frame read must re-serialize to bytes that read back as the
// same frame; a framing error is fine, a trap or a mismatch is a bug.
import HPACK
import HTTP2

func readAll(_ stream: ArraySlice<UInt8>, chunkSize: Int) -> (frames: [Frame], error: FrameError?) {
    var reader = FrameReader()
    var frames: [Frame] = []
    var offset = stream.startIndex
    while offset < stream.endIndex {
        let end = min(offset + chunkSize, stream.endIndex)
        reader.append(stream[offset..<end])
        offset = end
        while true {
            do {
                guard let frame = try reader.nextFrame() else { break }
                frames.append(frame)
            } catch {
                if case .connection = error { return (frames, error) }
                // A stream error skipped the frame; the reader carries on.
            }
        }
    }
    return (frames, nil)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let chunkSize = Int(input[0] % 32) + 1
    let stream = input[1...]

    let (frames, error) = readAll(stream, chunkSize: chunkSize)
    // Byte-at-a-time vs all-at-once vs the chosen split: the same frames and the same verdict.
    let whole = readAll(stream, chunkSize: max(stream.count, 1))
    guard whole.frames == frames, whole.error == error else { fatalError("frame reader depends on how input is split") }

    for frame in frames {
        var again = FrameReader(maxFrameSize: HTTP2Constants.maxAllowedFrameSize)
        again.append(frame.serialized()[...])
        let reread: Frame?
        do {
            reread = try again.nextFrame()
        } catch {
            fatalError("re-serialized frame does not read back: \(error) for \(frame)")
        }
        guard reread == frame else { fatalError("frame changed across serialize/read: \(frame) vs \(String(describing: reread))") }
        guard again.bufferedByteCount == 0 else { fatalError("serialized frame left \(again.bufferedByteCount) bytes") }
    }
    return 0
}
