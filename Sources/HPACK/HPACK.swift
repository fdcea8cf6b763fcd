// HPACK (RFC 7541): header compression for HTTP/2. This file holds the shared value types;
// HPACKDecoder.swift and HPACKEncoder.swift hold the codecs.

/// One header field. HPACK itself carries octets; names and values are decoded as UTF-8 (invalid sequences are
/// replaced with U+FFFD, while table accounting always uses the original octet lengths).
public struct HeaderField: Hashable, Sendable {
    public var name: String
    public var value: String
    /// The decoder's `HeaderFieldClassifier` result for this name and value (0: not classified). Derived from
    /// `name` and `value`, so it is no part of the field's identity (equality and hashing ignore it).
    public var classification: UInt16

    public init(name: String, value: String) {
        self.name = name
        self.value = value
        self.classification = 0
    }

    public static func == (lhs: HeaderField, rhs: HeaderField) -> Bool {
        lhs.name == rhs.name && lhs.value == rhs.value
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(value)
    }
}

/// Classifies a field for the decoder's user (e.g. which name it is and whether it is well-formed). The decoder calls
/// it once per field decoded from literal octets and keeps the result with a dynamic-table entry, so a field sent as
/// an index (most fields of repeated requests) arrives classified at no cost. Must be a pure function of name and
/// value, and return a nonzero value.
public typealias HeaderFieldClassifier = @Sendable (HeaderField) -> UInt16

/// What was malformed in a header block. Every case except `headerListTooLarge` leaves the decoder's dynamic
/// table in an undefined state: the connection must end with COMPRESSION_ERROR.
public enum HPACKError: Error, Equatable, Sendable {
    /// The block ended inside a prefix integer.
    case truncatedInteger
    /// A prefix integer is above 2^32 - 1 or uses more continuation bytes than such a value needs.
    case integerOverflow
    /// A string literal declares more octets than remain in the block.
    case truncatedString(declared: Int, remaining: Int)
    /// Index 0, or an index past the end of the static + dynamic table.
    case invalidIndex(Int)
    /// Huffman padding longer than 7 bits or not all 1s.
    case invalidHuffmanPadding
    /// The Huffman EOS symbol appeared inside a string.
    case huffmanEOS
    /// A dynamic table size update after the first header field of a block.
    case sizeUpdateNotAtStart
    /// A dynamic table size update above the SETTINGS_HEADER_TABLE_SIZE we advertised.
    case sizeUpdateAboveLimit(requested: Int, limit: Int)
    /// We lowered SETTINGS_HEADER_TABLE_SIZE below the table's size and the next block did not start with a
    /// size update (RFC 7541 section 4.2).
    case missingSizeUpdate
    /// The decoded list (name + value + 32 per field) exceeds maxHeaderListSize. The whole block was still
    /// processed, so the dynamic table stays in sync: the caller may fail just this stream.
    case headerListTooLarge(limit: Int)
}

extension HPACKError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .truncatedInteger: "HPACK: truncated integer"
        case .integerOverflow: "HPACK: integer too large"
        case .truncatedString(let declared, let remaining):
            "HPACK: string of \(declared) octets with \(remaining) left in the block"
        case .invalidIndex(let index): "HPACK: invalid table index \(index)"
        case .invalidHuffmanPadding: "HPACK: invalid Huffman padding"
        case .huffmanEOS: "HPACK: Huffman EOS inside a string"
        case .sizeUpdateNotAtStart: "HPACK: dynamic table size update after a header field"
        case .sizeUpdateAboveLimit(let requested, let limit):
            "HPACK: dynamic table size update to \(requested) above the limit \(limit)"
        case .missingSizeUpdate: "HPACK: required dynamic table size update missing"
        case .headerListTooLarge(let limit): "HPACK: header list larger than \(limit) octets"
        }
    }
}

/// RFC 7541 section 4.1: an entry's size is its name and value lengths in octets plus 32.
let entryOverhead = 32
