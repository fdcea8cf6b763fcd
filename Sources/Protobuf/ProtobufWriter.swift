/// Appends protobuf fields to a byte array. Callers decide what to omit (proto3 omits default values) and write
/// fields in field-number order so the output is deterministic.
public struct ProtobufWriter {
    public var bytes: [UInt8]

    @inlinable
    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    @inlinable
    public mutating func writeVarint(_ value: UInt64) {
        Varint.encode(value, into: &bytes)
    }

    @inlinable
    public mutating func writeTag(field: Int, wireType: WireType) {
        writeVarint(FieldTag(fieldNumber: field, wireType: wireType).rawValue)
    }

    /// A length-delimited field holding `payload` (bytes, a string's UTF-8, or an encoded sub-message).
    @inlinable
    public mutating func writeLengthDelimited(field: Int, _ payload: some Collection<UInt8>) {
        writeTag(field: field, wireType: .lengthDelimited)
        writeVarint(UInt64(payload.count))
        bytes.append(contentsOf: payload)
    }

    /// Only the tag and length of a length-delimited field; the caller appends exactly `length` bytes next.
    @inlinable
    public mutating func writeLengthDelimitedHeader(field: Int, length: Int) {
        writeTag(field: field, wireType: .lengthDelimited)
        writeVarint(UInt64(length))
    }

    /// Size of a length-delimited field with a payload of `length` bytes: tag + length varint + payload.
    @inlinable
    public static func lengthDelimitedFieldSize(field: Int, length: Int) -> Int {
        Varint.encodedSize(UInt64(field) << 3) + Varint.encodedSize(UInt64(length)) + length
    }
}
