// Protobuf wire format (https://protobuf.dev/programming-guides/encoding/): the primitives the KMS messages are
// built from. Pure: bytes in, values out, no I/O and no Foundation.

/// Why a protobuf input was rejected. Every malformation of untrusted input maps to one of these; none traps.
public enum ProtobufError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The input ended inside a varint, a fixed-width value or a tag.
    case truncated
    /// A varint longer than 10 bytes, or a 10-byte varint whose value does not fit in 64 bits.
    case malformedVarint
    /// Wire types 3 and 4 (groups, not used by proto3) and 6 and 7 (undefined).
    case invalidWireType(Int)
    /// Field number 0, or one above 2^29 - 1.
    case invalidFieldNumber(UInt64)
    /// A length-delimited field whose length runs past the end of its enclosing message.
    case lengthOutOfRange
    /// A proto3 `string` field (or map key) that is not valid UTF-8; `field` is the message's field number.
    case invalidUTF8(field: Int)

    public var description: String {
        switch self {
        case .truncated: return "protobuf: input truncated"
        case .malformedVarint: return "protobuf: malformed varint"
        case .invalidWireType(let type): return "protobuf: invalid wire type \(type)"
        case .invalidFieldNumber(let number): return "protobuf: invalid field number \(number)"
        case .lengthOutOfRange: return "protobuf: length-delimited field runs past the end of the message"
        case .invalidUTF8(let field): return "protobuf: field \(field) is not valid UTF-8"
        }
    }
}

/// The four wire types proto3 messages may contain.
public enum WireType: UInt8, Sendable {
    case varint = 0
    case fixed64 = 1
    case lengthDelimited = 2
    case fixed32 = 5
}

/// A decoded field key: `(fieldNumber << 3) | wireType` on the wire.
public struct FieldTag: Equatable, Sendable {
    /// The largest field number protobuf allows (2^29 - 1).
    public static let maxFieldNumber = (1 << 29) - 1

    public var fieldNumber: Int
    public var wireType: WireType

    public init(fieldNumber: Int, wireType: WireType) {
        self.fieldNumber = fieldNumber
        self.wireType = wireType
    }

    /// The tag's varint value.
    public var rawValue: UInt64 { UInt64(fieldNumber) << 3 | UInt64(wireType.rawValue) }
}
