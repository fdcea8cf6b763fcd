import Protobuf

// Decoders switch on (field number, wire type): a known field number arriving with another wire type is skipped as
// an unknown field, as protobuf's own parsers do. Encoders compute the exact size first so the output is allocated once.

public struct StatusRequest: ProtoMessage {
    public init() {}

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        var reader = ProtobufReader(bytes)
        while let tag = try reader.readTag() { try reader.skipField(tag.wireType) }
    }

    public func serializedBytes() -> [UInt8] { [] }
}

public struct StatusResponse: ProtoMessage {
    public var version: String
    public var healthz: String
    public var keyID: String

    public init(version: String = "", healthz: String = "", keyID: String = "") {
        self.version = version
        self.healthz = healthz
        self.keyID = keyID
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): version = try reader.readString(field: 1)
            case (2, .lengthDelimited): healthz = try reader.readString(field: 2)
            case (3, .lengthDelimited): keyID = try reader.readString(field: 3)
            default: try reader.skipField(tag.wireType)
            }
        }
    }

    public func serializedBytes() -> [UInt8] {
        let size = SingularField.size(field: 1, length: version.utf8.count)
            + SingularField.size(field: 2, length: healthz.utf8.count)
            + SingularField.size(field: 3, length: keyID.utf8.count)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, version.utf8, into: &writer)
        SingularField.write(field: 2, healthz.utf8, into: &writer)
        SingularField.write(field: 3, keyID.utf8, into: &writer)
        return writer.bytes
    }
}

public struct EncryptRequest: ProtoMessage {
    public var plaintext: [UInt8]
    public var uid: String

    public init(plaintext: [UInt8] = [], uid: String = "") {
        self.plaintext = plaintext
        self.uid = uid
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): plaintext = Array(try reader.readLengthDelimited())
            case (2, .lengthDelimited): uid = try reader.readString(field: 2)
            default: try reader.skipField(tag.wireType)
            }
        }
    }

    public func serializedBytes() -> [UInt8] {
        let size = SingularField.size(field: 1, length: plaintext.count)
            + SingularField.size(field: 2, length: uid.utf8.count)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, plaintext, into: &writer)
        SingularField.write(field: 2, uid.utf8, into: &writer)
        return writer.bytes
    }
}

public struct EncryptResponse: ProtoMessage {
    public var ciphertext: [UInt8]
    public var keyID: String
    public var annotations: [String: [UInt8]]

    public init(ciphertext: [UInt8] = [], keyID: String = "", annotations: [String: [UInt8]] = [:]) {
        self.ciphertext = ciphertext
        self.keyID = keyID
        self.annotations = annotations
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): ciphertext = Array(try reader.readLengthDelimited())
            case (2, .lengthDelimited): keyID = try reader.readString(field: 2)
            case (3, .lengthDelimited):
                try StringBytesMap.mergeEntry(try reader.readLengthDelimited(), into: &annotations, field: 3)
            default: try reader.skipField(tag.wireType)
            }
        }
    }

    public func serializedBytes() -> [UInt8] {
        let entries = StringBytesMap.sortedEntries(annotations)
        let size = SingularField.size(field: 1, length: ciphertext.count)
            + SingularField.size(field: 2, length: keyID.utf8.count)
            + StringBytesMap.encodedSize(entries, field: 3)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, ciphertext, into: &writer)
        SingularField.write(field: 2, keyID.utf8, into: &writer)
        StringBytesMap.write(entries, field: 3, into: &writer)
        return writer.bytes
    }
}

/// The annotations of the latest DecryptRequest decoded with this memo, and the map entries' bytes they came from.
/// kube-apiserver sends the same annotations with every Decrypt under one key version: a map is a function of its
/// entries' bytes in order, so equal bytes reuse it.
public struct AnnotationsMemo: Sendable {
    fileprivate var entries: [[UInt8]]
    fileprivate var map: [String: [UInt8]]

    public init() { self.init(entries: [], map: [:]) }

    fileprivate init(entries: [[UInt8]], map: [String: [UInt8]]) {
        self.entries = entries
        self.map = map
    }
}

public struct DecryptRequest: ProtoMessage {
    public var ciphertext: [UInt8]
    public var uid: String
    public var keyID: String
    public var annotations: [String: [UInt8]]

    public init(ciphertext: [UInt8] = [], uid: String = "", keyID: String = "", annotations: [String: [UInt8]] = [:]) {
        self.ciphertext = ciphertext
        self.uid = uid
        self.keyID = keyID
        self.annotations = annotations
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        var memo = AnnotationsMemo()
        try self.init(serializedBytes: bytes, memo: &memo)
    }

    /// Decodes like `init(serializedBytes:)`; when the annotation entries are the same bytes as in the request
    /// `memo` last saw, their map is reused instead of built (and hashed) again, and `memo` keeps the latest.
    public init(serializedBytes bytes: ArraySlice<UInt8>, memo: inout AnnotationsMemo) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        var entries: [ArraySlice<UInt8>] = []
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): ciphertext = Array(try reader.readLengthDelimited())
            case (2, .lengthDelimited): uid = try reader.readString(field: 2)
            case (3, .lengthDelimited): keyID = try reader.readString(field: 3)
            case (4, .lengthDelimited): entries.append(try reader.readLengthDelimited())
            default: try reader.skipField(tag.wireType)
            }
        }
        if entries.isEmpty { return }
        if entries.elementsEqual(memo.entries, by: { $0.elementsEqual($1) }) {
            annotations = memo.map
            return
        }
        for entry in entries { try StringBytesMap.mergeEntry(entry, into: &annotations, field: 4) }
        memo = AnnotationsMemo(entries: entries.map { Array($0) }, map: annotations)
    }

    public func serializedBytes() -> [UInt8] {
        let entries = StringBytesMap.sortedEntries(annotations)
        let size = SingularField.size(field: 1, length: ciphertext.count)
            + SingularField.size(field: 2, length: uid.utf8.count)
            + SingularField.size(field: 3, length: keyID.utf8.count)
            + StringBytesMap.encodedSize(entries, field: 4)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, ciphertext, into: &writer)
        SingularField.write(field: 2, uid.utf8, into: &writer)
        SingularField.write(field: 3, keyID.utf8, into: &writer)
        StringBytesMap.write(entries, field: 4, into: &writer)
        return writer.bytes
    }
}

public struct DecryptResponse: ProtoMessage {
    public var plaintext: [UInt8]

    public init(plaintext: [UInt8] = []) {
        self.plaintext = plaintext
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): plaintext = Array(try reader.readLengthDelimited())
            default: try reader.skipField(tag.wireType)
            }
        }
    }

    public func serializedBytes() -> [UInt8] {
        var writer = ProtobufWriter(capacity: SingularField.size(field: 1, length: plaintext.count))
        SingularField.write(field: 1, plaintext, into: &writer)
        return writer.bytes
    }
}
