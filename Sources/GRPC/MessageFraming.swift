// gRPC length-prefixed messages: 1 byte compressed flag, 4 bytes big-endian length, the message.

public enum MessageFramingError: Error, Equatable, Sendable {
    case tooLarge(length: Int, limit: Int)
    case compressedNotSupported
    case invalidFlag(UInt8)
}

/// Reassembles length-prefixed messages from DATA payloads that need not align with message boundaries.
/// A message's bytes are kept as the chunks they arrived in and joined once, when it is complete: memory follows
/// what was received (no doubling buffer, no copy per DATA frame), which is what the request buffer caps count.
public struct MessageReader: Sendable {
    public let maxMessageSize: Int
    /// The next message's 5-byte prefix, as far as it has arrived.
    private var prefix: [UInt8] = []
    /// Declared length of the message in progress (meaningful once `prefix` is complete).
    private var length = 0
    private var chunks: [[UInt8]] = []
    private var chunkBytes = 0
    public private(set) var messages: [[UInt8]] = []

    public init(maxMessageSize: Int) { self.maxMessageSize = maxMessageSize }

    /// Appends DATA bytes; throws as soon as a header announces something we refuse, before buffering it.
    public mutating func append(_ bytes: [UInt8]) throws(MessageFramingError) {
        if prefix.isEmpty && chunks.isEmpty, Self.isWholeMessage(bytes, maxMessageSize: maxMessageSize) {
            messages.append(Array(bytes[MessageFraming.prefixSize...]))
            return
        }
        var index = 0
        while index < bytes.count {
            if prefix.count < MessageFraming.prefixSize {
                let take = min(MessageFraming.prefixSize - prefix.count, bytes.count - index)
                prefix.append(contentsOf: bytes[index..<(index + take)])
                index += take
                guard prefix.count == MessageFraming.prefixSize else { return }
                guard prefix[0] == 0 else { throw prefix[0] == 1 ? .compressedNotSupported : .invalidFlag(prefix[0]) }
                length = Int(prefix[1]) << 24 | Int(prefix[2]) << 16 | Int(prefix[3]) << 8 | Int(prefix[4])
                guard length <= maxMessageSize else { throw .tooLarge(length: length, limit: maxMessageSize) }
                if length == 0 { completeMessage() }
                continue
            }
            let take = min(length - chunkBytes, bytes.count - index)
            chunks.append(index == 0 && take == bytes.count ? bytes : Array(bytes[index..<(index + take)]))
            chunkBytes += take
            index += take
            if chunkBytes == length { completeMessage() }
        }
    }

    private mutating func completeMessage() {
        var message: [UInt8]
        if chunks.count == 1 {
            message = chunks[0]
        } else {
            message = []
            message.reserveCapacity(length)
            for chunk in chunks { message.append(contentsOf: chunk) }
        }
        messages.append(message)
        chunks = []
        chunkBytes = 0
        prefix.removeAll(keepingCapacity: true)
    }

    /// Whether `bytes` are exactly one uncompressed message within `maxMessageSize`, its prefix included (the usual
    /// unary request: one DATA payload).
    public static func isWholeMessage(_ bytes: [UInt8], maxMessageSize: Int) -> Bool {
        guard bytes.count >= MessageFraming.prefixSize, bytes[0] == 0 else { return false }
        let declared = Int(bytes[1]) << 24 | Int(bytes[2]) << 16 | Int(bytes[3]) << 8 | Int(bytes[4])
        return declared == bytes.count - MessageFraming.prefixSize && declared <= maxMessageSize
    }

    /// Nothing received yet: no message, no part of one.
    public var isEmpty: Bool { prefix.isEmpty && chunks.isEmpty && messages.isEmpty }

    /// Bytes of an incomplete message still waiting for more DATA.
    public var pendingBytes: Int { prefix.count + chunkBytes }

    /// Bytes still missing from the message being received, once its 5-byte prefix is in (its length is then
    /// within `maxMessageSize`); nil before a prefix.
    public var bytesToCompleteMessage: Int? {
        prefix.count == MessageFraming.prefixSize ? length - chunkBytes : nil
    }
}

public enum MessageFraming {
    /// The compressed flag and the 32-bit length before each message.
    public static let prefixSize = 5

    public static func frame(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        frame(message, into: &out)
        return out
    }

    /// Appends `message` framed to `out`.
    public static func frame(_ message: [UInt8], into out: inout [UInt8]) {
        out.reserveCapacity(out.count + message.count + prefixSize)
        let n = UInt32(truncatingIfNeeded: message.count)
        out.append(0)
        out.append(UInt8(n >> 24)); out.append(UInt8((n >> 16) & 0xFF))
        out.append(UInt8((n >> 8) & 0xFF)); out.append(UInt8(n & 0xFF))
        out.append(contentsOf: message)
    }
}
