// RFC 7541 sections 5.1 and 5.2: prefix integers and string literals.

/// Reads integers and string literals from one header block. Every read checks the remaining length first.
struct BlockReader {
    let bytes: UnsafeBufferPointer<UInt8>
    private(set) var position = 0

    /// Largest integer accepted: nothing in HPACK needs more, and it keeps all later arithmetic far from overflow.
    static let maxInteger = Int(UInt32.max)

    init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    var isAtEnd: Bool { position >= bytes.count }
    var remaining: Int { bytes.count - position }

    /// The current octet; the caller checks `isAtEnd` first.
    var current: UInt8 { bytes[position] }

    /// An N-bit prefix integer starting at the current octet (whose high 8 - N bits are the representation's flags).
    mutating func readInteger(prefixBits: Int) throws(HPACKError) -> Int {
        guard position < bytes.count else { throw .truncatedInteger }
        let mask = (1 << prefixBits) - 1
        let prefix = Int(bytes[position]) & mask
        position += 1
        if prefix < mask { return prefix }
        var value = mask
        var shift = 0
        while true {
            guard position < bytes.count else { throw .truncatedInteger }
            let byte = bytes[position]
            position += 1
            // 2^32 - 1 needs at most 5 continuation octets (35 bits); more, or a larger sum, is refused.
            value += Int(byte & 0x7F) << shift
            guard value <= Self.maxInteger else { throw .integerOverflow }
            if byte & 0x80 == 0 { return value }
            shift += 7
            guard shift <= 28 else { throw .integerOverflow }
        }
    }

    /// A string literal: returns the decoded string and its length in octets.
    mutating func readString() throws(HPACKError) -> (String, Int) {
        guard position < bytes.count else { throw .truncatedInteger }
        let huffman = bytes[position] & 0x80 != 0
        let length = try readInteger(prefixBits: 7)
        guard length <= remaining else { throw .truncatedString(declared: length, remaining: remaining) }
        let raw = UnsafeBufferPointer(rebasing: bytes[position..<position + length])
        position += length
        if huffman { return try Huffman.decode(raw) }
        return (String(decoding: raw, as: UTF8.self), length)
    }
}

/// Appends an N-bit prefix integer; `flags` supplies the high 8 - N bits of the first octet.
func appendInteger(_ value: Int, prefixBits: Int, flags: UInt8, to buffer: inout [UInt8]) {
    let mask = (1 << prefixBits) - 1
    if value < mask {
        buffer.append(flags | UInt8(value))
        return
    }
    buffer.append(flags | UInt8(mask))
    var rest = value - mask
    while rest >= 0x80 {
        buffer.append(UInt8(truncatingIfNeeded: rest) | 0x80)
        rest >>= 7
    }
    buffer.append(UInt8(rest))
}
