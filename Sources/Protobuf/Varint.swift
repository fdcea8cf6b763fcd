/// Base-128 varints: 7 bits per byte, least significant group first, high bit set on all bytes but the last.
public enum Varint {
    /// A 64-bit value needs at most 10 bytes (9 × 7 = 63 bits, then one more bit).
    public static let maxLength = 10

    /// How many bytes `value` takes when encoded.
    @inlinable
    public static func encodedSize(_ value: UInt64) -> Int {
        // 1 byte per started group of 7 significant bits; 0 still takes one byte.
        let significantBits = 64 - (value | 1).leadingZeroBitCount
        return (significantBits + 6) / 7
    }

    /// Appends the encoding of `value` to `buffer`.
    @inlinable
    public static func encode(_ value: UInt64, into buffer: inout [UInt8]) {
        var remaining = value
        while remaining >= 0x80 {
            buffer.append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        buffer.append(UInt8(remaining))
    }

    /// Decodes the varint starting at `index` in `bytes` and returns it with the index just past it.
    /// Non-minimal encodings up to 10 bytes are accepted (as every protobuf parser does); longer ones and 10-byte
    /// ones overflowing 64 bits are `.malformedVarint`, and running off the end is `.truncated`.
    @inlinable
    public static func decode(_ bytes: ArraySlice<UInt8>, at index: Int) throws(ProtobufError) -> (value: UInt64, next: Int) {
        var position = index
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < bytes.endIndex else { throw .truncated }
            let byte = bytes[position]
            position += 1
            if shift == 63 {
                // Tenth byte: only its lowest bit still fits, and it must end the varint.
                guard byte <= 1 else { throw .malformedVarint }
                return (value | UInt64(byte) << 63, position)
            }
            value |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return (value, position) }
            shift += 7
        }
    }
}
