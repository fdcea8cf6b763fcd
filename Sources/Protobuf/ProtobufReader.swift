/// Reads protobuf fields from a byte slice without copying it: every read advances `offset` and returns values or
/// sub-slices that share the input's storage. Lengths are checked against the remaining bytes before any slicing.
public struct ProtobufReader {
    public let bytes: ArraySlice<UInt8>
    /// Index into `bytes` of the next unread byte (slice indices, so it starts at `bytes.startIndex`).
    @inlinable public var offset: Int { position }
    @usableFromInline var position: Int

    @inlinable
    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    @inlinable
    public var isAtEnd: Bool { offset >= bytes.endIndex }

    @inlinable
    public var remainingCount: Int { bytes.endIndex - offset }

    @inlinable
    public mutating func readVarint() throws(ProtobufError) -> UInt64 {
        // Fast path: most tags and short lengths are a single byte.
        if offset < bytes.endIndex, bytes[offset] < 0x80 {
            let value = UInt64(bytes[offset])
            position += 1
            return value
        }
        let (value, next) = try Varint.decode(bytes, at: offset)
        position = next
        return value
    }

    /// The next field's tag, or nil at the end of the input.
    @inlinable
    public mutating func readTag() throws(ProtobufError) -> FieldTag? {
        if isAtEnd { return nil }
        let key = try readVarint()
        let number = key >> 3
        guard number != 0, number <= UInt64(FieldTag.maxFieldNumber) else { throw .invalidFieldNumber(number) }
        let rawType = UInt8(truncatingIfNeeded: key & 7)
        guard let wireType = WireType(rawValue: rawType) else { throw .invalidWireType(Int(rawType)) }
        return FieldTag(fieldNumber: Int(number), wireType: wireType)
    }

    /// The payload of a length-delimited field, as a sub-slice of the input.
    @inlinable
    public mutating func readLengthDelimited() throws(ProtobufError) -> ArraySlice<UInt8> {
        let length = try readVarint()
        // Compare as UInt64 first: an untrusted length must never overflow Int arithmetic.
        guard length <= UInt64(remainingCount) else { throw .lengthOutOfRange }
        let end = offset + Int(length)
        let payload = bytes[offset..<end]
        position = end
        return payload
    }

    /// A proto3 `string` payload; invalid UTF-8 is an error naming `field`.
    @inlinable
    public mutating func readString(field: Int) throws(ProtobufError) -> String {
        try Self.string(try readLengthDelimited(), field: field)
    }

    /// A `string` field's payload read earlier with `readLengthDelimited` (to compare its bytes first), as a String.
    @inlinable
    public static func string(_ payload: ArraySlice<UInt8>, field: Int) throws(ProtobufError) -> String {
        if payload.isEmpty { return "" }
        let string: String? = payload.withUnsafeBufferPointer { buffer in
            // ASCII (every uid and key_id the apiserver sends) is valid UTF-8 as it is; only other text is validated.
            var high: UInt8 = 0
            for byte in buffer { high |= byte }
            return high < 0x80 ? String(decoding: buffer, as: UTF8.self) : String(validating: buffer, as: UTF8.self)
        }
        guard let string else { throw .invalidUTF8(field: field) }
        return string
    }

    @inlinable
    public mutating func readFixed32() throws(ProtobufError) -> UInt32 { try readLittleEndian() }

    @inlinable
    public mutating func readFixed64() throws(ProtobufError) -> UInt64 { try readLittleEndian() }

    @inlinable
    mutating func readLittleEndian<Value: FixedWidthInteger & UnsignedInteger>() throws(ProtobufError) -> Value {
        let size = Value.bitWidth / 8
        guard remainingCount >= size else { throw .truncated }
        var value: Value = 0
        for index in 0..<size { value |= Value(bytes[position + index]) << (8 * index) }
        position += size
        return value
    }

    /// Skips the value of a field this message does not know (or a known field sent with another wire type,
    /// which protobuf parsers treat as unknown too).
    @inlinable
    public mutating func skipField(_ wireType: WireType) throws(ProtobufError) {
        switch wireType {
        case .varint: _ = try readVarint()
        case .fixed64: _ = try readFixed64()
        case .lengthDelimited: _ = try readLengthDelimited()
        case .fixed32: _ = try readFixed32()
        }
    }
}
