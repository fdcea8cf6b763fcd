// The KMS v2 messages of Proto/kms/v2/api.proto (package v2), hand-coded over the Protobuf wire primitives.
import Protobuf

/// A message of the KMS v2 contract.
public protocol ProtoMessage: Sendable, Equatable {
    /// Decodes with proto3 semantics: absent fields are defaults, the last occurrence of a scalar field wins, map
    /// entries merge (a later duplicate key wins), unknown fields are skipped, strings must be valid UTF-8.
    init(serializedBytes: ArraySlice<UInt8>) throws(ProtobufError)
    /// Deterministic encoding: default values omitted, fields in number order, map entries sorted by key bytes.
    func serializedBytes() -> [UInt8]
}

extension ProtoMessage {
    @inlinable
    public init(serializedBytes bytes: [UInt8]) throws(ProtobufError) {
        try self.init(serializedBytes: bytes[...])
    }
}

/// `map<string, bytes>` fields: each entry is a length-delimited message `{1: key, 2: value}`.
enum StringBytesMap {
    /// Decodes one entry payload and merges it into `map`. A missing key or value means the empty default.
    /// Invalid UTF-8 in the key is reported with the map's own field number. Unknown fields inside the entry are
    /// skipped and the entry kept (as protobuf-go does; upb would set the whole entry aside as unknown).
    /// Limitation of the `[String: [UInt8]]` contract: Swift compares keys by canonical equivalence, so two keys
    /// with different bytes but the same normalised text (e.g. "é" and "e\u{301}") collapse into one entry. Real
    /// annotation keys are ASCII domain names, for which bytes and text equality agree.
    static func mergeEntry(_ entry: ArraySlice<UInt8>, into map: inout [String: [UInt8]], field: Int) throws(ProtobufError) {
        var reader = ProtobufReader(entry)
        var key = ""
        var value: ArraySlice<UInt8> = []
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): key = try reader.readString(field: field)
            case (2, .lengthDelimited): value = try reader.readLengthDelimited()
            default: try reader.skipField(tag.wireType)
            }
        }
        if map.isEmpty {
            // The usual single annotation: built in one step (a subscript insert into the empty map hashes the
            // key twice, before and after allocating the storage).
            map = [key: Array(value)]
        } else {
            map[key] = Array(value)
        }
    }

    /// Entries sorted by the key's UTF-8 bytes (not `String` ordering, which is by Unicode scalars after
    /// normalisation) so equal maps always encode to equal bytes.
    static func sortedEntries(_ map: [String: [UInt8]]) -> [(key: String, value: [UInt8])] {
        map.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
    }

    static func entryPayloadSize(key: String, value: [UInt8]) -> Int {
        // Key and value are always written inside an entry, as Google's encoders do.
        ProtobufWriter.lengthDelimitedFieldSize(field: 1, length: key.utf8.count)
            + ProtobufWriter.lengthDelimitedFieldSize(field: 2, length: value.count)
    }

    /// The size does not depend on the order: summed over the map as it is.
    static func encodedSize(_ map: [String: [UInt8]], field: Int) -> Int {
        var size = 0
        for entry in map {
            size += ProtobufWriter.lengthDelimitedFieldSize(field: field, length: entryPayloadSize(key: entry.key, value: entry.value))
        }
        return size
    }

    static func write(_ map: [String: [UInt8]], field: Int, into writer: inout ProtobufWriter) {
        // One entry (the usual case) has no order to establish: no sorted copy is made.
        if map.count == 1, let only = map.first {
            write(key: only.key, value: only.value, field: field, into: &writer)
            return
        }
        for entry in sortedEntries(map) { write(key: entry.key, value: entry.value, field: field, into: &writer) }
    }

    private static func write(key: String, value: [UInt8], field: Int, into writer: inout ProtobufWriter) {
        writer.writeLengthDelimitedHeader(field: field, length: entryPayloadSize(key: key, value: value))
        writer.writeLengthDelimited(field: 1, key.utf8)
        writer.writeLengthDelimited(field: 2, value)
    }
}

/// Size and write helpers for proto3 singular `bytes`/`string` fields, which are omitted when empty.
enum SingularField {
    static func size(field: Int, length: Int) -> Int {
        length == 0 ? 0 : ProtobufWriter.lengthDelimitedFieldSize(field: field, length: length)
    }

    static func write(field: Int, _ payload: some Collection<UInt8>, into writer: inout ProtobufWriter) {
        if !payload.isEmpty { writer.writeLengthDelimited(field: field, payload) }
    }
}
