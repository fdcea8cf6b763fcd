// The KMS layer's vocabulary: its one error type (mapped once to gRPC status at the server edge), the backend
// protocol and the values backends hand back.
import GRPCCodes

/// An error of the KMS layer. The message is safe to send to the client and to log: it never holds key material
/// or plaintext.
public struct KMSError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: GRPCStatusCode
    public var message: String
    public init(_ code: GRPCStatusCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

/// A request a backend makes to its key service: the `op` label of `kekd_backend_requests_total` and
/// `kekd_backend_request_duration_seconds`. The raw value is the label value, fixed snake_case.
public enum BackendOperation: String, Sendable, CaseIterable {
    // Vault: token upkeep and Transit.
    case login = "login", lookupSelf = "lookup_self", renewSelf = "renew_self"
    case readKey = "read_key", encrypt = "encrypt", decrypt = "decrypt", rotate = "rotate", config = "config"
    // PKCS#11: rounds on the token (generate and retire: kekctl pkcs11, which reports none).
    case connect = "connect", scan = "scan", wrap = "wrap", unwrap = "unwrap", generate = "generate", retire = "retire"
}

/// Reports one backend request: its operation, its result (`ok`, or why it failed: a gRPC status name for Vault, a
/// CK_RV name for PKCS#11) and its seconds, retries included.
public typealias BackendCallHook = @Sendable (_ op: BackendOperation, _ result: String, _ seconds: Double) -> Void

/// What Status reports, from cached state only.
public struct BackendStatus: Sendable, Equatable {
    public var healthy: Bool
    /// The current primary's key_id; empty when the backend has no usable key yet.
    public var keyID: String
    public var detail: String
    public init(healthy: Bool, keyID: String, detail: String) {
        self.healthy = healthy
        self.keyID = keyID
        self.detail = detail
    }
}

public struct EncryptResult: Sendable {
    public var ciphertext: [UInt8]
    public var keyID: String
    public var annotations: [String: [UInt8]]
    public init(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]]) {
        self.ciphertext = ciphertext
        self.keyID = keyID
        self.annotations = annotations
    }
}

/// A call as a backend sees it before doing it (`KeyBackend.wouldBlock`).
public enum BackendCall: Sendable {
    case encrypt
    case decrypt(keyID: String, annotations: [String: [UInt8]])
}

public protocol KeyBackend: AnyObject, Sendable {
    /// "file" | "vault" (the audit record's `backend`).
    var name: String { get }
    /// Whether this call would wait on the network or a device now (a cache miss, a local KEK to replace): the input
    /// of the server's execution policy. A call that would not is answered on the connection's own thread, skipping
    /// the pool's hand-off; `true` is always safe.
    func wouldBlock(_ call: BackendCall) -> Bool
    /// Cached state only, never I/O; keyID = the current primary's key_id.
    func status() -> BackendStatus
    /// The returned keyID is the primary's key_id from the same snapshot Status reads.
    /// `context` bounds any waiting (the caller's deadline) and tells a waiting call that nobody wants its answer.
    func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult
    func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                 context: CallContext) throws(KMSError) -> [UInt8]
    /// SIGHUP: re-read key material/credentials now (no-op if not applicable).
    func reload()
    func close()
}

extension KeyBackend {
    /// Without a caller's deadline or cancellation (tools, tests).
    public func encrypt(plaintext: [UInt8], uid: String) throws(KMSError) -> EncryptResult {
        try encrypt(plaintext: plaintext, uid: uid, context: .unbounded)
    }

    public func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String) throws(KMSError) -> [UInt8] {
        try decrypt(ciphertext: ciphertext, keyID: keyID, annotations: annotations, uid: uid, context: .unbounded)
    }
}
