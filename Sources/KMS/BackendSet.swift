// Several key backends in one kekd: one encrypts, the others only decrypt (moving data from one backend to another
// without a second plugin). Decrypt is routed by the key_id's prefix, which says which kind of backend issued it, and
// the chosen backend then checks the envelope itself; no backend is ever tried on another's ciphertext.

/// The kind of backend a key_id belongs to, from its prefix. Every kind's key_ids have their own prefix, so they
/// never collide. A new kind is one entry in `kinds`.
public enum KeyIDKind {
    /// (kind, the key_id prefix, whether a digit must follow it). Matched on the UTF-8 bytes: this runs up to three
    /// times per Decrypt (routing, inline-or-pool, audit), and `String.hasPrefix` costs a grapheme-aware compare.
    /// The file backend's prefix `kekd-v` only counts followed by a digit, so `kekd-vault-` is never taken for it.
    static let kinds: [(kind: String, prefix: [UInt8], digitFollows: Bool)] = [
        ("vault", Array("kekd-vault-".utf8), false),
        ("pkcs11", Array("kekd-pkcs11-".utf8), false),
        ("file", Array("kekd-v".utf8), true),
    ]

    /// "file", "vault", "pkcs11", or nil for a key_id no kekd backend issues.
    public static func of(_ keyID: String) -> String? {
        var keyID = keyID
        return keyID.withUTF8 { bytes in
            for entry in kinds where bytes.count >= entry.prefix.count
                && entry.prefix.withUnsafeBufferPointer({ $0.elementsEqual(bytes.prefix(entry.prefix.count)) }) {
                guard entry.digitFollows else { return entry.kind }
                guard bytes.count > entry.prefix.count else { return nil }
                let next = bytes[entry.prefix.count]
                return next >= UInt8(ascii: "0") && next <= UInt8(ascii: "9") ? entry.kind : nil
            }
            return nil
        }
    }

    public static var known: [String] { kinds.map(\.kind) }
}

/// One backend of a `BackendSet` and what it does there, for `/readyz` and metrics.
public struct BackendMember: Sendable {
    public enum Role: String, Sendable { case encrypt, decryptOnly = "decrypt-only" }
    public let backend: any KeyBackend
    public let role: Role
    public var kind: String { backend.name }
}

public final class BackendSet: KeyBackend {
    public let encrypting: any KeyBackend
    public let decryptOnly: [any KeyBackend]
    /// (kind, backend), at most one per kind: a linear scan of one to three entries beats hashing the kind.
    private let byKind: [(kind: String, backend: any KeyBackend)]

    /// Throws when two backends are of the same kind (their key_ids could not be told apart).
    public init(encrypting: any KeyBackend, decryptOnly: [any KeyBackend] = []) throws(KMSError) {
        self.encrypting = encrypting
        self.decryptOnly = decryptOnly
        var byKind: [(kind: String, backend: any KeyBackend)] = []
        for backend in [encrypting] + decryptOnly {
            guard !byKind.contains(where: { $0.kind == backend.name }) else {
                throw KMSError(.invalidArgument, "two \(backend.name) backends: at most one backend of each kind")
            }
            byKind.append((backend.name, backend))
        }
        self.byKind = byKind
    }

    public var members: [BackendMember] {
        [BackendMember(backend: encrypting, role: .encrypt)] + decryptOnly.map { BackendMember(backend: $0, role: .decryptOnly) }
    }

    /// The encrypting backend's: Encrypt, Status and the audit record of those calls name it.
    public var name: String { encrypting.name }

    public func status() -> BackendStatus { encrypting.status() }

    public func wouldBlock(_ call: BackendCall) -> Bool {
        switch call {
        case .encrypt: return encrypting.wouldBlock(call)
        // A key_id no backend here takes is refused at once, without blocking.
        case .decrypt(let keyID, _): return (try? backend(forKeyID: keyID))?.wouldBlock(call) ?? false
        }
    }

    public func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        try encrypting.encrypt(plaintext: plaintext, uid: uid, context: context)
    }

    public func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                        context: CallContext) throws(KMSError) -> [UInt8] {
        try backend(forKeyID: keyID).decrypt(ciphertext: ciphertext, keyID: keyID, annotations: annotations, uid: uid, context: context)
    }

    /// The backend that decrypts under `keyID`: INVALID_ARGUMENT for a key_id no kekd backend issues,
    /// FAILED_PRECONDITION naming the kind when that kind is not configured here.
    public func backend(forKeyID keyID: String) throws(KMSError) -> any KeyBackend {
        guard let kind = KeyIDKind.of(keyID) else {
            throw KMSError(.invalidArgument, "key_id was not issued by kekd (no known backend prefix: "
                           + "file kekd-v<N>-, vault kekd-vault-, pkcs11 kekd-pkcs11-)")
        }
        guard let backend = byKind.first(where: { $0.kind == kind })?.backend else {
            throw KMSError(.failedPrecondition, "key_id belongs to the \(kind) backend, which this kekd does not have "
                           + "(configured: \(members.map(\.kind).joined(separator: ", ")))")
        }
        return backend
    }

    /// For the audit record: the backend a Decrypt under `keyID` is (or would be) served by, else the encrypting one.
    public func servingBackendName(decryptKeyID keyID: String) -> String {
        // One backend (the usual set): it serves every Decrypt it is asked, and names the others too.
        if decryptOnly.isEmpty { return name }
        return (try? backend(forKeyID: keyID))?.name ?? name
    }

    public func reload() { for member in members { member.backend.reload() } }
    public func close() { for member in members { member.backend.close() } }
}
