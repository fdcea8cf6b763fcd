// HTTP/2 frame codec (RFC 9113 §4, §6): a value type, an incremental reader and a serializer.
// Framing rules that need no connection state (lengths, stream-id 0 rules, padding) live here; stream and
// connection semantics live in HTTP2Connection, as in Go's x/net/http2 (frame.go vs server.go).

/// Frame type codes (§6). Unknown types are kept as `.unknown` and ignored by the connection.
public enum FrameType: UInt8, Sendable {
    case data = 0, headers, priority, rstStream, settings, pushPromise, ping, goAway, windowUpdate, continuation
}

/// Frame flag bits (§6). The same bit means different things per type (END_STREAM vs ACK).
public enum FrameFlag {
    public static let endStream: UInt8 = 0x1
    public static let ack: UInt8 = 0x1
    public static let endHeaders: UInt8 = 0x4
    public static let padded: UInt8 = 0x8
    public static let priority: UInt8 = 0x20
}

/// The PRIORITY fields of a HEADERS or PRIORITY frame (§5.3.2 is deprecated; only parsed to check self-dependency).
public struct PriorityInfo: Equatable, Sendable {
    public var exclusive: Bool
    public var dependency: UInt32
    public var weight: UInt8
    public init(exclusive: Bool, dependency: UInt32, weight: UInt8) {
        self.exclusive = exclusive; self.dependency = dependency; self.weight = weight
    }
}

/// One decoded HTTP/2 frame. Padding is stripped on read; `padding` on write asks for that many zero pad bytes.
public struct Frame: Equatable, Sendable {
    public enum Payload: Equatable, Sendable {
        case data(bytes: [UInt8], endStream: Bool, padding: Int?)
        /// `block` (here and in `continuation`) is a slice of the reader's buffer, not a copy: the connection decodes
        /// it before it reads the next frame, and copies only a block that waits for its CONTINUATION frames.
        case headers(block: ArraySlice<UInt8>, endStream: Bool, endHeaders: Bool, priority: PriorityInfo?, padding: Int?)
        case priority(PriorityInfo)
        case rstStream(HTTP2ErrorCode)
        case settings([HTTP2Setting], ack: Bool)
        case pushPromise(promisedStreamID: UInt32, block: [UInt8], endHeaders: Bool, padding: Int?)
        case ping(opaque: UInt64, ack: Bool)
        case goAway(lastStreamID: UInt32, code: HTTP2ErrorCode, debugData: [UInt8])
        case windowUpdate(increment: UInt32)
        case continuation(block: ArraySlice<UInt8>, endHeaders: Bool)
        case unknown(type: UInt8, flags: UInt8, payload: [UInt8])
    }
    public var streamID: UInt32
    public var payload: Payload
    public init(streamID: UInt32, payload: Payload) { self.streamID = streamID; self.payload = payload }

    /// Serializes the frame (no size checks: tests and fuzzers use it to build malformed input too).
    public func serialize(into out: inout [UInt8]) {
        switch payload {
        case let .data(bytes, endStream, padding):
            let flags = (endStream ? FrameFlag.endStream : 0) | (padding != nil ? FrameFlag.padded : 0)
            FrameWriter.appendPadded(into: &out, type: .data, flags: flags, streamID: streamID, prefix: [],
                                     body: bytes[...], padding: padding)
        case let .headers(block, endStream, endHeaders, priority, padding):
            var flags = (endStream ? FrameFlag.endStream : 0) | (endHeaders ? FrameFlag.endHeaders : 0)
            flags |= (padding != nil ? FrameFlag.padded : 0) | (priority != nil ? FrameFlag.priority : 0)
            var prefix: [UInt8] = []
            if let priority { FrameWriter.appendPriority(priority, into: &prefix) }
            FrameWriter.appendPadded(into: &out, type: .headers, flags: flags, streamID: streamID, prefix: prefix,
                                     body: block[...], padding: padding)
        case let .priority(info):
            FrameWriter.appendHeader(into: &out, length: 5, type: FrameType.priority.rawValue, flags: 0, streamID: streamID)
            FrameWriter.appendPriority(info, into: &out)
        case let .rstStream(code):
            FrameWriter.appendRstStream(into: &out, streamID: streamID, code: code)
        case let .settings(settings, ack):
            FrameWriter.appendSettings(into: &out, settings, ack: ack, streamID: streamID)
        case let .pushPromise(promised, block, endHeaders, padding):
            let flags = (endHeaders ? FrameFlag.endHeaders : 0) | (padding != nil ? FrameFlag.padded : 0)
            var prefix: [UInt8] = []
            FrameWriter.appendUInt32(promised & 0x7fff_ffff, into: &prefix)
            FrameWriter.appendPadded(into: &out, type: .pushPromise, flags: flags, streamID: streamID, prefix: prefix,
                                     body: block[...], padding: padding)
        case let .ping(opaque, ack):
            FrameWriter.appendPing(into: &out, opaque: opaque, ack: ack, streamID: streamID)
        case let .goAway(last, code, debugData):
            FrameWriter.appendGoAway(into: &out, lastStreamID: last, code: code, debug: debugData, streamID: streamID)
        case let .windowUpdate(increment):
            FrameWriter.appendWindowUpdate(into: &out, streamID: streamID, increment: increment)
        case let .continuation(block, endHeaders):
            FrameWriter.appendHeader(into: &out, length: block.count, type: FrameType.continuation.rawValue,
                                     flags: endHeaders ? FrameFlag.endHeaders : 0, streamID: streamID)
            out.append(contentsOf: block)
        case let .unknown(type, flags, bytes):
            FrameWriter.appendHeader(into: &out, length: bytes.count, type: type, flags: flags, streamID: streamID)
            out.append(contentsOf: bytes)
        }
    }

    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        serialize(into: &out)
        return out
    }
}

/// A framing violation found by `FrameReader`, with the RFC's choice of connection vs stream error.
public enum FrameError: Error, Equatable, Sendable {
    case connection(HTTP2ErrorCode, String)
    /// The offending frame was consumed; the connection answers with RST_STREAM and carries on.
    case stream(UInt32, HTTP2ErrorCode, String)
}

/// Incremental frame parser over a growing buffer. Consumed bytes are tracked with an offset and compacted
/// lazily, so a burst of small frames costs no per-frame shifting.
public struct FrameReader: Sendable {
    private var buffer: [UInt8] = []
    private var readIndex = 0
    /// Our SETTINGS_MAX_FRAME_SIZE: a longer frame is a connection FRAME_SIZE_ERROR, detected from its header alone.
    public var maxFrameSize: Int

    public init(maxFrameSize: Int = HTTP2Constants.defaultMaxFrameSize) { self.maxFrameSize = maxFrameSize }

    /// Bytes received but not yet returned as frames.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    public mutating func append(_ bytes: ArraySlice<UInt8>) {
        if readIndex > 0 && readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        } else if readIndex >= 65536 {
            buffer.removeSubrange(0..<readIndex)
            readIndex = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Takes `count` raw bytes from the front (the connection preface), or fewer if not buffered yet.
    public mutating func takeRawBytes(upTo count: Int) -> ArraySlice<UInt8> {
        let n = min(count, buffer.count - readIndex)
        defer { readIndex += n }
        return buffer[readIndex..<(readIndex + n)]
    }

    /// The next complete frame, nil when more bytes are needed. After a `.connection` error the reader must not be
    /// used again; after a `.stream` error the frame has been skipped.
    public mutating func nextFrame() throws(FrameError) -> Frame? {
        let available = buffer.count - readIndex
        guard available >= HTTP2Constants.frameHeaderLength else { return nil }
        let h = readIndex
        let length = Int(buffer[h]) << 16 | Int(buffer[h + 1]) << 8 | Int(buffer[h + 2])
        let rawType = buffer[h + 3]
        let flags = buffer[h + 4]
        let streamID = readUInt32(at: h + 5) & 0x7fff_ffff
        if length > maxFrameSize {
            throw .connection(.frameSizeError, "frame of \(length) bytes exceeds SETTINGS_MAX_FRAME_SIZE \(maxFrameSize)")
        }
        guard available >= HTTP2Constants.frameHeaderLength + length else { return nil }
        let start = h + HTTP2Constants.frameHeaderLength
        readIndex = start + length
        return try decodePayload(type: rawType, flags: flags, streamID: streamID, start: start, length: length)
    }

    private func readUInt32(at i: Int) -> UInt32 {
        UInt32(buffer[i]) << 24 | UInt32(buffer[i + 1]) << 16 | UInt32(buffer[i + 2]) << 8 | UInt32(buffer[i + 3])
    }

    private func readPriority(at i: Int) -> PriorityInfo {
        let word = readUInt32(at: i)
        return PriorityInfo(exclusive: word & 0x8000_0000 != 0, dependency: word & 0x7fff_ffff, weight: buffer[i + 4])
    }

    /// Strips padding (§6.1): returns the body range after `prefixLength` fixed bytes, and the pad length.
    private func unpad(flags: UInt8, start: Int, length: Int, prefixLength: Int,
                       name: String) throws(FrameError) -> (Range<Int>, Int?) {
        var bodyStart = start
        var padLength: Int?
        var remaining = length
        if flags & FrameFlag.padded != 0 {
            guard length >= 1 else { throw .connection(.frameSizeError, "\(name) frame too short for its pad length") }
            let pad = Int(buffer[start])
            padLength = pad
            bodyStart += 1
            remaining -= 1
            guard remaining >= prefixLength else { throw .connection(.frameSizeError, "\(name) frame too short") }
            guard pad <= remaining - prefixLength else {
                throw .connection(.protocolError, "\(name) padding longer than the payload")
            }
            remaining -= pad
        }
        guard remaining >= prefixLength else { throw .connection(.frameSizeError, "\(name) frame too short") }
        return (bodyStart + prefixLength..<(bodyStart + remaining), padLength)
    }

    private func decodePayload(type rawType: UInt8, flags: UInt8, streamID: UInt32, start: Int,
                               length: Int) throws(FrameError) -> Frame {
        guard let type = FrameType(rawValue: rawType) else {
            return Frame(streamID: streamID,
                         payload: .unknown(type: rawType, flags: flags, payload: Array(buffer[start..<(start + length)])))
        }
        switch type {
        case .data:
            guard streamID != 0 else { throw .connection(.protocolError, "DATA on stream 0") }
            let (body, pad) = try unpad(flags: flags, start: start, length: length, prefixLength: 0, name: "DATA")
            return Frame(streamID: streamID, payload: .data(bytes: Array(buffer[body]),
                                                            endStream: flags & FrameFlag.endStream != 0, padding: pad))
        case .headers:
            guard streamID != 0 else { throw .connection(.protocolError, "HEADERS on stream 0") }
            let hasPriority = flags & FrameFlag.priority != 0
            let (body, pad) = try unpad(flags: flags, start: start, length: length, prefixLength: hasPriority ? 5 : 0,
                                        name: "HEADERS")
            let priority = hasPriority ? readPriority(at: body.lowerBound - 5) : nil
            return Frame(streamID: streamID, payload: .headers(
                block: buffer[body], endStream: flags & FrameFlag.endStream != 0,
                endHeaders: flags & FrameFlag.endHeaders != 0, priority: priority, padding: pad))
        case .priority:
            guard streamID != 0 else { throw .connection(.protocolError, "PRIORITY on stream 0") }
            guard length == 5 else { throw .stream(streamID, .frameSizeError, "PRIORITY length \(length) != 5") }
            return Frame(streamID: streamID, payload: .priority(readPriority(at: start)))
        case .rstStream:
            guard streamID != 0 else { throw .connection(.protocolError, "RST_STREAM on stream 0") }
            guard length == 4 else { throw .connection(.frameSizeError, "RST_STREAM length \(length) != 4") }
            return Frame(streamID: streamID, payload: .rstStream(HTTP2ErrorCode(wireValue: readUInt32(at: start))))
        case .settings:
            guard streamID == 0 else { throw .connection(.protocolError, "SETTINGS on stream \(streamID)") }
            let ack = flags & FrameFlag.ack != 0
            if ack {
                guard length == 0 else { throw .connection(.frameSizeError, "SETTINGS ACK with a payload") }
                return Frame(streamID: 0, payload: .settings([], ack: true))
            }
            guard length % 6 == 0 else { throw .connection(.frameSizeError, "SETTINGS length \(length) not a multiple of 6") }
            var settings: [HTTP2Setting] = []
            settings.reserveCapacity(length / 6)
            var i = start
            while i < start + length {
                let id = UInt16(buffer[i]) << 8 | UInt16(buffer[i + 1])
                settings.append(HTTP2Setting(id: id, value: readUInt32(at: i + 2)))
                i += 6
            }
            return Frame(streamID: 0, payload: .settings(settings, ack: false))
        case .pushPromise:
            guard streamID != 0 else { throw .connection(.protocolError, "PUSH_PROMISE on stream 0") }
            let (body, pad) = try unpad(flags: flags, start: start, length: length, prefixLength: 4, name: "PUSH_PROMISE")
            let promised = readUInt32(at: body.lowerBound - 4) & 0x7fff_ffff
            return Frame(streamID: streamID, payload: .pushPromise(
                promisedStreamID: promised, block: Array(buffer[body]),
                endHeaders: flags & FrameFlag.endHeaders != 0, padding: pad))
        case .ping:
            guard streamID == 0 else { throw .connection(.protocolError, "PING on stream \(streamID)") }
            guard length == 8 else { throw .connection(.frameSizeError, "PING length \(length) != 8") }
            let opaque = UInt64(readUInt32(at: start)) << 32 | UInt64(readUInt32(at: start + 4))
            return Frame(streamID: 0, payload: .ping(opaque: opaque, ack: flags & FrameFlag.ack != 0))
        case .goAway:
            guard streamID == 0 else { throw .connection(.protocolError, "GOAWAY on stream \(streamID)") }
            guard length >= 8 else { throw .connection(.frameSizeError, "GOAWAY length \(length) < 8") }
            return Frame(streamID: 0, payload: .goAway(
                lastStreamID: readUInt32(at: start) & 0x7fff_ffff, code: HTTP2ErrorCode(wireValue: readUInt32(at: start + 4)),
                debugData: Array(buffer[(start + 8)..<(start + length)])))
        case .windowUpdate:
            guard length == 4 else { throw .connection(.frameSizeError, "WINDOW_UPDATE length \(length) != 4") }
            return Frame(streamID: streamID, payload: .windowUpdate(increment: readUInt32(at: start) & 0x7fff_ffff))
        case .continuation:
            guard streamID != 0 else { throw .connection(.protocolError, "CONTINUATION on stream 0") }
            return Frame(streamID: streamID, payload: .continuation(
                block: buffer[start..<(start + length)], endHeaders: flags & FrameFlag.endHeaders != 0))
        }
    }
}

/// Appends frames straight into an output buffer (the connection's hot path builds no `Frame` values).
public enum FrameWriter {
    public static func appendHeader(into out: inout [UInt8], length: Int, type: UInt8, flags: UInt8, streamID: UInt32) {
        // Built on the stack and appended once: nine single-byte appends each checked capacity and uniqueness.
        let id = streamID & 0x7fff_ffff
        let header: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (
            UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 8),
            UInt8(truncatingIfNeeded: length), type, flags,
            UInt8(truncatingIfNeeded: id >> 24), UInt8(truncatingIfNeeded: id >> 16),
            UInt8(truncatingIfNeeded: id >> 8), UInt8(truncatingIfNeeded: id))
        withUnsafeBytes(of: header) { out.append(contentsOf: $0) }
    }

    public static func appendUInt16(_ v: UInt16, into out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: v >> 8))
        out.append(UInt8(truncatingIfNeeded: v))
    }

    public static func appendUInt32(_ v: UInt32, into out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: v >> 24))
        out.append(UInt8(truncatingIfNeeded: v >> 16))
        out.append(UInt8(truncatingIfNeeded: v >> 8))
        out.append(UInt8(truncatingIfNeeded: v))
    }

    public static func appendUInt64(_ v: UInt64, into out: inout [UInt8]) {
        appendUInt32(UInt32(truncatingIfNeeded: v >> 32), into: &out)
        appendUInt32(UInt32(truncatingIfNeeded: v), into: &out)
    }

    static func appendPriority(_ info: PriorityInfo, into out: inout [UInt8]) {
        appendUInt32((info.exclusive ? 0x8000_0000 : 0) | (info.dependency & 0x7fff_ffff), into: &out)
        out.append(info.weight)
    }

    static func appendPadded(into out: inout [UInt8], type: FrameType, flags: UInt8, streamID: UInt32,
                             prefix: [UInt8], body: ArraySlice<UInt8>, padding: Int?) {
        let pad = max(0, min(padding ?? 0, 255))
        let length = (padding != nil ? 1 + pad : 0) + prefix.count + body.count
        appendHeader(into: &out, length: length, type: type.rawValue, flags: flags, streamID: streamID)
        if padding != nil { out.append(UInt8(pad)) }
        out.append(contentsOf: prefix)
        out.append(contentsOf: body)
        if pad > 0 { out.append(contentsOf: repeatElement(0, count: pad)) }
    }

    public static func appendData(into out: inout [UInt8], streamID: UInt32, bytes: ArraySlice<UInt8>, endStream: Bool) {
        appendHeader(into: &out, length: bytes.count, type: FrameType.data.rawValue,
                     flags: endStream ? FrameFlag.endStream : 0, streamID: streamID)
        out.append(contentsOf: bytes)
    }

    public static func appendRstStream(into out: inout [UInt8], streamID: UInt32, code: HTTP2ErrorCode) {
        appendHeader(into: &out, length: 4, type: FrameType.rstStream.rawValue, flags: 0, streamID: streamID)
        appendUInt32(code.rawValue, into: &out)
    }

    // Control frames. `streamID` is 0 on the wire; `Frame.serialize` passes others to build malformed input.

    public static func appendSettings(into out: inout [UInt8], _ settings: [HTTP2Setting], ack: Bool = false,
                                      streamID: UInt32 = 0) {
        appendHeader(into: &out, length: settings.count * 6, type: FrameType.settings.rawValue,
                     flags: ack ? FrameFlag.ack : 0, streamID: streamID)
        for setting in settings {
            appendUInt16(setting.id, into: &out)
            appendUInt32(setting.value, into: &out)
        }
    }

    public static func appendPing(into out: inout [UInt8], opaque: UInt64, ack: Bool, streamID: UInt32 = 0) {
        appendHeader(into: &out, length: 8, type: FrameType.ping.rawValue, flags: ack ? FrameFlag.ack : 0,
                     streamID: streamID)
        appendUInt64(opaque, into: &out)
    }

    public static func appendGoAway<Debug: Collection<UInt8>>(into out: inout [UInt8], lastStreamID: UInt32,
                                                               code: HTTP2ErrorCode, debug: Debug,
                                                               streamID: UInt32 = 0) {
        appendHeader(into: &out, length: 8 + debug.count, type: FrameType.goAway.rawValue, flags: 0,
                     streamID: streamID)
        appendUInt32(lastStreamID & 0x7fff_ffff, into: &out)
        appendUInt32(code.rawValue, into: &out)
        out.append(contentsOf: debug)
    }

    public static func appendWindowUpdate(into out: inout [UInt8], streamID: UInt32, increment: UInt32) {
        appendHeader(into: &out, length: 4, type: FrameType.windowUpdate.rawValue, flags: 0, streamID: streamID)
        appendUInt32(increment & 0x7fff_ffff, into: &out)
    }

    /// A header block as HEADERS + CONTINUATION frames of at most `maxFrameSize` payload each, back to back (§4.3).
    public static func appendHeaderBlock(into out: inout [UInt8], streamID: UInt32, block: ArraySlice<UInt8>,
                                         endStream: Bool, maxFrameSize: Int) {
        var offset = block.startIndex
        var first = true
        repeat {
            let n = min(maxFrameSize, block.endIndex - offset)
            let last = offset + n == block.endIndex
            if first {
                let flags = (endStream ? FrameFlag.endStream : 0) | (last ? FrameFlag.endHeaders : 0)
                appendHeader(into: &out, length: n, type: FrameType.headers.rawValue, flags: flags, streamID: streamID)
            } else {
                appendHeader(into: &out, length: n, type: FrameType.continuation.rawValue,
                             flags: last ? FrameFlag.endHeaders : 0, streamID: streamID)
            }
            out.append(contentsOf: block[offset..<(offset + n)])
            offset += n
            first = false
        } while offset < block.endIndex
    }
}
