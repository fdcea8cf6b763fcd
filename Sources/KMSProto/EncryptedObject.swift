// The value kube-apiserver stores in etcd after the `k8s:enc:kms:v2:<provider>:` prefix
// (Proto/storage/kmsv2/v2/api.proto, package v2), hand-coded over the Protobuf wire primitives like the KMS messages.
import Protobuf

/// How the plaintext of `encryptedDEKSource` gives the DEK. Unknown numbers are kept (proto3 open enums).
public enum EncryptedDEKSourceType: Sendable, Equatable, Hashable {
    /// The DEK itself (apiservers before 1.29).
    case aesGCMKey
    /// A seed; each write's DEK is derived from it with HKDF-SHA256 and a random info (1.29+).
    case hkdfSHA256XNonceAESGCMSeed
    case unrecognized(UInt64)

    public init(rawValue: UInt64) {
        switch rawValue {
        case 0: self = .aesGCMKey
        case 1: self = .hkdfSHA256XNonceAESGCMSeed
        default: self = .unrecognized(rawValue)
        }
    }

    public var rawValue: UInt64 {
        switch self {
        case .aesGCMKey: return 0
        case .hkdfSHA256XNonceAESGCMSeed: return 1
        case .unrecognized(let value): return value
        }
    }

    /// The upstream enum value's name.
    public var name: String {
        switch self {
        case .aesGCMKey: return "AES_GCM_KEY"
        case .hkdfSHA256XNonceAESGCMSeed: return "HKDF_SHA256_XNONCE_AES_GCM_SEED"
        case .unrecognized(let value): return "\(value)"
        }
    }
}

public struct EncryptedObject: ProtoMessage {
    public var encryptedData: [UInt8]
    public var keyID: String
    public var encryptedDEKSource: [UInt8]
    public var annotations: [String: [UInt8]]
    public var encryptedDEKSourceType: EncryptedDEKSourceType

    public init(encryptedData: [UInt8] = [], keyID: String = "", encryptedDEKSource: [UInt8] = [],
                annotations: [String: [UInt8]] = [:], encryptedDEKSourceType: EncryptedDEKSourceType = .aesGCMKey) {
        self.encryptedData = encryptedData
        self.keyID = keyID
        self.encryptedDEKSource = encryptedDEKSource
        self.annotations = annotations
        self.encryptedDEKSourceType = encryptedDEKSourceType
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtobufError) {
        self.init()
        var reader = ProtobufReader(bytes)
        while let tag = try reader.readTag() {
            switch (tag.fieldNumber, tag.wireType) {
            case (1, .lengthDelimited): encryptedData = Array(try reader.readLengthDelimited())
            case (2, .lengthDelimited): keyID = try reader.readString(field: 2)
            case (3, .lengthDelimited): encryptedDEKSource = Array(try reader.readLengthDelimited())
            case (4, .lengthDelimited):
                try StringBytesMap.mergeEntry(try reader.readLengthDelimited(), into: &annotations, field: 4)
            case (5, .varint): encryptedDEKSourceType = EncryptedDEKSourceType(rawValue: try reader.readVarint())
            default: try reader.skipField(tag.wireType)
            }
        }
    }

    public func serializedBytes() -> [UInt8] {
        let sourceType = encryptedDEKSourceType.rawValue
        let size = SingularField.size(field: 1, length: encryptedData.count)
            + SingularField.size(field: 2, length: keyID.utf8.count)
            + SingularField.size(field: 3, length: encryptedDEKSource.count)
            + StringBytesMap.encodedSize(annotations, field: 4)
            + (sourceType == 0 ? 0 : 1 + 10)
        var writer = ProtobufWriter(capacity: size)
        SingularField.write(field: 1, encryptedData, into: &writer)
        SingularField.write(field: 2, keyID.utf8, into: &writer)
        SingularField.write(field: 3, encryptedDEKSource, into: &writer)
        StringBytesMap.write(annotations, field: 4, into: &writer)
        if sourceType != 0 {
            writer.writeTag(field: 5, wireType: .varint)
            writer.writeVarint(sourceType)
        }
        return writer.bytes
    }
}
