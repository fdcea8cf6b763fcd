import Glibc
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
        let size = SingularField.size(field: 1, length: ciphertext.count)
            + SingularField.size(field: 2, length: keyID.utf8.count)
            + StringBytesMap.encodedSize(annotations, field: 3)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, ciphertext, into: &writer)
        SingularField.write(field: 2, keyID.utf8, into: &writer)
        StringBytesMap.write(annotations, field: 3, into: &writer)
        return writer.bytes
    }
}

/// The key_id and annotations of the latest DecryptRequest decoded with this memo, and the bytes they came from.
/// kube-apiserver sends the same key_id and annotations with every Decrypt under one key version: a String or map is
/// a function of its bytes, so equal bytes reuse it instead of allocating (and hashing) it again.
public struct AnnotationsMemo: Sendable {
    fileprivate var keyIDBytes: [UInt8] = []
    fileprivate var keyID = ""
    fileprivate var entries: [[UInt8]] = []
    fileprivate var map: [String: [UInt8]] = [:]

    public init() {}

    /// Whether `first` followed by `more` are the map entries' bytes this memo holds.
    fileprivate func holds(_ first: ArraySlice<UInt8>, _ more: [ArraySlice<UInt8>]) -> Bool {
        entries.count == 1 + more.count && sameBytes(entries[0], first)
            && zip(entries.dropFirst(), more).allSatisfy { sameBytes($0, $1) }
    }
}

/// One memcmp: `elementsEqual` goes byte by byte through the generic sequence path.
private func sameBytes(_ a: [UInt8], _ b: ArraySlice<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    return a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 } }
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

    /// Decodes like `init(serializedBytes:)`; when the key_id or the annotation entries are the same bytes as in the
    /// request `memo` last saw, its String or map is reused instead of built again, and `memo` keeps the latest.
    public init(serializedBytes bytes: ArraySlice<UInt8>, memo: inout AnnotationsMemo) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        var keyIDBytes: ArraySlice<UInt8> = []
        // The usual single entry is kept apart: no array is allocated for it.
        var firstEntry: ArraySlice<UInt8>?
        var moreEntries: [ArraySlice<UInt8>] = []
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): ciphertext = Array(try reader.readLengthDelimited())
            case (2, .lengthDelimited): uid = try reader.readString(field: 2)
            case (3, .lengthDelimited):
                // Only the last occurrence is kept, but every one must be UTF-8 (as protobuf-go and upb check).
                if !keyIDBytes.isEmpty { _ = try ProtobufReader.string(keyIDBytes, field: 3) }
                keyIDBytes = try reader.readLengthDelimited()
            case (4, .lengthDelimited):
                let entry = try reader.readLengthDelimited()
                if firstEntry == nil { firstEntry = entry } else { moreEntries.append(entry) }
            default: try reader.skipField(tag.wireType)
            }
        }
        if !keyIDBytes.isEmpty {
            if sameBytes(memo.keyIDBytes, keyIDBytes) {
                keyID = memo.keyID
            } else {
                keyID = try ProtobufReader.string(keyIDBytes, field: 3)
                memo.keyIDBytes = Array(keyIDBytes)
                memo.keyID = keyID
            }
        }
        guard let firstEntry else { return }
        if memo.holds(firstEntry, moreEntries) {
            annotations = memo.map
            return
        }
        try StringBytesMap.mergeEntry(firstEntry, into: &annotations, field: 4)
        for entry in moreEntries { try StringBytesMap.mergeEntry(entry, into: &annotations, field: 4) }
        memo.entries = [Array(firstEntry)] + moreEntries.map { Array($0) }
        memo.map = annotations
    }

    public func serializedBytes() -> [UInt8] {
        let size = SingularField.size(field: 1, length: ciphertext.count)
            + SingularField.size(field: 2, length: uid.utf8.count)
            + SingularField.size(field: 3, length: keyID.utf8.count)
            + StringBytesMap.encodedSize(annotations, field: 4)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, ciphertext, into: &writer)
        SingularField.write(field: 2, uid.utf8, into: &writer)
        SingularField.write(field: 3, keyID.utf8, into: &writer)
        StringBytesMap.write(annotations, field: 4, into: &writer)
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
