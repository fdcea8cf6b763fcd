// gRPC length-prefixed messages: 1 byte compressed flag, 4 bytes big-endian length, the message.

public enum MessageFramingError: Error, Equatable, Sendable {
    case tooLarge(length: Int, limit: Int)
    case compressedNotSupported
    case invalidFlag(UInt8)
}

/// Reassembles length-prefixed messages from DATA payloads that need not align with message boundaries.
public struct MessageReader: Sendable {
    public let maxMessageSize: Int
    private var buffer: [UInt8] = []
    private var offset = 0
    public private(set) var messages: [[UInt8]] = []

    public init(maxMessageSize: Int) { self.maxMessageSize = maxMessageSize }

    /// Appends DATA bytes; throws as soon as a header announces something we refuse, before buffering it.
    public mutating func append(_ bytes: [UInt8]) throws(MessageFramingError) {
        if offset == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            offset = 0
        }
        buffer.append(contentsOf: bytes)
        while buffer.count - offset >= 5 {
            let flag = buffer[offset]
            guard flag == 0 else { throw flag == 1 ? .compressedNotSupported : .invalidFlag(flag) }
            let length = Int(buffer[offset + 1]) << 24 | Int(buffer[offset + 2]) << 16
                | Int(buffer[offset + 3]) << 8 | Int(buffer[offset + 4])
            guard length <= maxMessageSize else { throw .tooLarge(length: length, limit: maxMessageSize) }
            guard buffer.count - offset - 5 >= length else { return }
            messages.append(Array(buffer[(offset + 5)..<(offset + 5 + length)]))
            offset += 5 + length
        }
        // Everything parsed: drop the copy now rather than hold it next to the message until the stream ends.
        if offset == buffer.count && offset > 0 {
            buffer = []
            offset = 0
        }
    }

    /// Bytes of an incomplete message still waiting for more DATA.
    public var pendingBytes: Int { buffer.count - offset }

    /// Bytes still missing from the message being received, once its 5-byte header is in (its length is then
    /// within `maxMessageSize`); nil before a header.
    public var bytesToCompleteMessage: Int? {
        guard buffer.count - offset >= 5 else { return nil }
        let length = Int(buffer[offset + 1]) << 24 | Int(buffer[offset + 2]) << 16
            | Int(buffer[offset + 3]) << 8 | Int(buffer[offset + 4])
        return 5 + length - (buffer.count - offset)
    }
}

public enum MessageFraming {
    public static func frame(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(message.count + 5)
        let n = UInt32(truncatingIfNeeded: message.count)
        out.append(0)
        out.append(UInt8(n >> 24)); out.append(UInt8((n >> 16) & 0xFF))
        out.append(UInt8((n >> 8) & 0xFF)); out.append(UInt8(n & 0xFF))
        out.append(contentsOf: message)
        return out
    }
}
