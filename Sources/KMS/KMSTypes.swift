// The KMS layer's vocabulary: its one error type (mapped once to gRPC status at the server edge), the backend
// protocol and the values backends hand back.

/// gRPC status codes this layer produces; the raw values are the gRPC codes.
public enum KMSErrorCode: Int, Sendable {
    case invalidArgument = 3, deadlineExceeded = 4, permissionDenied = 7, resourceExhausted = 8,
         failedPrecondition = 9, internalError = 13, unavailable = 14, dataLoss = 15

    /// The gRPC code name, as used in audit records and metrics labels.
    public var name: String {
        switch self {
        case .invalidArgument: return "INVALID_ARGUMENT"
        case .deadlineExceeded: return "DEADLINE_EXCEEDED"
        case .permissionDenied: return "PERMISSION_DENIED"
        case .resourceExhausted: return "RESOURCE_EXHAUSTED"
        case .failedPrecondition: return "FAILED_PRECONDITION"
        case .internalError: return "INTERNAL"
        case .unavailable: return "UNAVAILABLE"
        case .dataLoss: return "DATA_LOSS"
        }
    }
}

/// An error of the KMS layer. The message is safe to send to the client and to log: it never holds key material
/// or plaintext.
public struct KMSError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: KMSErrorCode
    public var message: String
    public init(_ code: KMSErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

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
