// What kube-apiserver's storage transformers left in front of a stored value (kms-v2-facts.md 2.7), and which resource
// an etcd key belongs to. Pure: bytes in, a classification out. Never keeps or returns a value's bytes, a ciphertext
// or an annotation value: only names (provider, key_id, annotation keys).
import KMSProto

/// The storage formats a census tells apart; raw values are the `kind` strings of `kekctl census` output.
public enum StoredKind: String, Sendable, Hashable, CaseIterable, Comparable {
    case kmsV2 = "kms-v2"
    case kmsV1 = "kms-v1"
    case aescbc
    case aesgcm
    case secretbox
    case identity
    case unknown

    public static func < (a: StoredKind, b: StoredKind) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// What a stored value's prefix (and, for kms v2, its EncryptedObject) says about how it is stored.
public struct StoredValueClass: Sendable, Equatable {
    public var kind: StoredKind
    /// The KMS provider name of a kms-v1/kms-v2 prefix; nil for the other kinds.
    public var provider: String?
    /// kms-v2: the EncryptedObject's key_id (nil when the EncryptedObject does not decode). aescbc, aesgcm and
    /// secretbox: the name of the key in the EncryptionConfiguration, which their prefix carries. Otherwise nil.
    public var keyID: String?
    /// kms-v2: the EncryptedObject's annotation keys, sorted (their values are never read out).
    public var annotationKeys: [String] = []
    /// kms-v2: how the encrypted DEK source gives the DEK.
    public var dekSourceType: EncryptedDEKSourceType?

    public init(kind: StoredKind, provider: String? = nil, keyID: String? = nil, annotationKeys: [String] = [],
                dekSourceType: EncryptedDEKSourceType? = nil) {
        self.kind = kind; self.provider = provider; self.keyID = keyID
        self.annotationKeys = annotationKeys; self.dekSourceType = dekSourceType
    }
}

public enum StoredValue {
    static let kmsV2Prefix = Array("k8s:enc:kms:v2:".utf8)
    static let kmsV1Prefix = Array("k8s:enc:kms:v1:".utf8)
    /// The local-key providers: their prefix is followed by the key's name and ":" (apiserver `prefixTransformers`).
    static let localKeyPrefixes: [(prefix: [UInt8], kind: StoredKind)] = [
        (Array("k8s:enc:aescbc:v1:".utf8), .aescbc),
        (Array("k8s:enc:aesgcm:v1:".utf8), .aesgcm),
        (Array("k8s:enc:secretbox:v1:".utf8), .secretbox),
    ]
    /// Kubernetes' protobuf serialization starts with these four bytes (`k8s` and a zero).
    static let protobufMagic: [UInt8] = [0x6b, 0x38, 0x73, 0x00]
    /// Longest provider or key name looked for; a longer run without ":" is not a prefix we know.
    static let maxNameLength = 256

    public static func classify(_ value: some Collection<UInt8>) -> StoredValueClass {
        let bytes = ArraySlice(value)
        if bytes.starts(with: kmsV2Prefix) {
            guard let (name, rest) = name(after: kmsV2Prefix.count, in: bytes) else { return StoredValueClass(kind: .unknown) }
            guard let object = try? EncryptedObject(serializedBytes: rest) else {
                return StoredValueClass(kind: .kmsV2, provider: name)
            }
            return StoredValueClass(kind: .kmsV2, provider: name, keyID: object.keyID,
                                    annotationKeys: object.annotations.keys.sorted(), dekSourceType: object.encryptedDEKSourceType)
        }
        if bytes.starts(with: kmsV1Prefix) {
            guard let (name, _) = name(after: kmsV1Prefix.count, in: bytes) else { return StoredValueClass(kind: .unknown) }
            return StoredValueClass(kind: .kmsV1, provider: name)
        }
        for local in localKeyPrefixes where bytes.starts(with: local.prefix) {
            guard let (name, _) = name(after: local.prefix.count, in: bytes) else { return StoredValueClass(kind: .unknown) }
            return StoredValueClass(kind: local.kind, keyID: name)
        }
        if bytes.starts(with: protobufMagic) { return StoredValueClass(kind: .identity) }
        // JSON objects, as the apiserver writes them (no leading space; a BOM or whitespace is not its output).
        if bytes.first == UInt8(ascii: "{") { return StoredValueClass(kind: .identity) }
        return StoredValueClass(kind: .unknown)
    }

    /// The text between `offset` and the next ":" and the bytes after that ":"; nil when there is no ":" within
    /// `maxNameLength` bytes, the name is empty or not UTF-8.
    static func name(after offset: Int, in bytes: ArraySlice<UInt8>) -> (String, ArraySlice<UInt8>)? {
        let start = bytes.startIndex + offset
        let window = bytes[start..<min(bytes.endIndex, start + maxNameLength + 1)]
        guard let colon = window.firstIndex(of: UInt8(ascii: ":")), colon > start,
              let name = String(validating: bytes[start..<colon], as: UTF8.self) else { return nil }
        return (name, bytes[(colon + 1)...])
    }

    /// The resource an etcd key under `prefix` belongs to: the first path component after the prefix (`secrets`),
    /// or the first two when the first names an API group (contains a dot: `example.com/widgets`). Nil when the key
    /// is not under the prefix or nothing follows it.
    public static func resource(ofKey key: some Collection<UInt8>, prefix: [UInt8]) -> String? {
        let bytes = ArraySlice(key)
        guard bytes.starts(with: prefix) else { return nil }
        let rest = bytes.dropFirst(prefix.count)
        let parts = rest.split(separator: UInt8(ascii: "/"), maxSplits: 2, omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty else { return nil }
        let firstText = String(decoding: first, as: UTF8.self)
        if first.contains(UInt8(ascii: ".")), parts.count > 1, !parts[1].isEmpty {
            return firstText + "/" + String(decoding: parts[1], as: UTF8.self)
        }
        return firstText
    }
}
