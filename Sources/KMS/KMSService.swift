// The three KMS v2 calls: request validation in front of a KeyBackend, and a check of what the backend returns
// against the apiserver's own limits, so a bad request never reaches a backend and the apiserver never receives
// something it would reject.
import KMSProto
import Locking

public final class KMSService: Sendable {
    /// The Status `version` values kube-apiserver accepts; kekd should refuse any other flag value.
    public static let supportedStatusVersions = ["v2", "v2beta1"]

    public let backend: any KeyBackend
    public let statusVersion: String
    /// The last Status answer and its wire bytes, reused while the backend's status is the same.
    private let lastStatus = LockedValue<StatusAnswer?>(nil)

    /// One Status answer: an object, so taking it from the lock is one retain rather than a copy of every field.
    private final class StatusAnswer: Sendable {
        let state: BackendStatus
        let response: StatusResponse
        let bytes: [UInt8]
        init(state: BackendStatus, response: StatusResponse, bytes: [UInt8]) {
            self.state = state
            self.response = response
            self.bytes = bytes
        }
    }

    public init(backend: any KeyBackend, statusVersion: String = "v2") {
        self.backend = backend
        self.statusVersion = statusVersion
    }

    /// Cached state only (the backend's `status()` does no I/O). healthz is "ok" exactly when the backend is healthy.
    /// key_id is the backend's primary key_id; a backend with none yet reports an empty key_id, which the apiserver
    /// counts as an invalid Status, so it stops extending its write DEK (kms-v2-facts 2.2).
    public func status(_ request: StatusRequest) -> StatusResponse {
        Self.response(to: backend.status(), version: statusVersion)
    }

    private static func response(to state: BackendStatus, version: String) -> StatusResponse {
        let healthz = state.healthy ? "ok" : (state.detail.isEmpty ? "unhealthy" : "unhealthy: " + state.detail)
        return StatusResponse(version: version, healthz: healthz, keyID: state.keyID)
    }

    /// `status(_:)` with its serialized form: kube-apiserver polls Status, and the answer changes only with the backend's
    /// state, so it is encoded once per state rather than per call.
    public func statusAnswer() -> (response: StatusResponse, bytes: [UInt8]) {
        let state = backend.status()
        if let last = lastStatus.withLock({ $0 }), last.state == state { return (last.response, last.bytes) }
        let response = Self.response(to: state, version: statusVersion)
        let answer = StatusAnswer(state: state, response: response, bytes: response.serializedBytes())
        lastStatus.withLock { $0 = answer }
        return (answer.response, answer.bytes)
    }

    public func encrypt(_ request: EncryptRequest, context: CallContext = .unbounded) throws(KMSError) -> EncryptResponse {
        guard !request.plaintext.isEmpty else { throw KMSError(.invalidArgument, "plaintext is empty") }
        guard request.plaintext.count <= KMSLimits.maxPlaintextBytes else {
            throw KMSError(.invalidArgument, "plaintext is \(request.plaintext.count) bytes, the limit is \(KMSLimits.maxPlaintextBytes)")
        }
        try validateUID(request.uid)
        let result = try backend.encrypt(plaintext: request.plaintext, uid: request.uid, context: context)
        try checkBackendOutput(result, plaintextSize: request.plaintext.count)
        return EncryptResponse(ciphertext: result.ciphertext, keyID: result.keyID, annotations: result.annotations)
    }

    public func decrypt(_ request: DecryptRequest, context: CallContext = .unbounded) throws(KMSError) -> DecryptResponse {
        guard !request.ciphertext.isEmpty else { throw KMSError(.invalidArgument, "ciphertext is empty") }
        guard request.ciphertext.count <= KMSLimits.maxCiphertextBytes else {
            throw KMSError(.invalidArgument, "ciphertext is \(request.ciphertext.count) bytes, the limit is \(KMSLimits.maxCiphertextBytes)")
        }
        try validateKeyID(request.keyID)
        try validateAnnotations(request.annotations)
        try validateUID(request.uid)
        let plaintext = try backend.decrypt(ciphertext: request.ciphertext, keyID: request.keyID,
                                            annotations: request.annotations, uid: request.uid, context: context)
        return DecryptResponse(plaintext: plaintext)
    }

    /// The backend a Decrypt under `keyID` goes to (the audit record's `backend`): with several backends the one its
    /// key_id belongs to.
    public func decryptBackendName(keyID: String) -> String {
        (backend as? BackendSet)?.servingBackendName(decryptKeyID: keyID) ?? backend.name
    }

    private func validateUID(_ uid: String) throws(KMSError) {
        guard uid.utf8.count <= KMSLimits.maxUIDBytes else {
            throw KMSError(.invalidArgument, "uid is \(uid.utf8.count) bytes, the limit is \(KMSLimits.maxUIDBytes)")
        }
    }

    /// The apiserver rejects an Encrypt answer with an empty or oversized ciphertext (for its 32-byte seeds), a bad
    /// key_id or bad annotations; such an answer is our bug, reported as INTERNAL rather than passed on.
    private func checkBackendOutput(_ result: EncryptResult, plaintextSize: Int) throws(KMSError) {
        guard !result.ciphertext.isEmpty else { throw KMSError(.internalError, "\(backend.name) backend returned an empty ciphertext") }
        if plaintextSize <= 32 && result.ciphertext.count > KMSLimits.maxDEKCiphertextBytes {
            throw KMSError(.internalError, "\(backend.name) backend returned a \(result.ciphertext.count)-byte ciphertext for a DEK, over the apiserver's \(KMSLimits.maxDEKCiphertextBytes)-byte limit")
        }
        do {
            try validateKeyID(result.keyID)
            try validateAnnotations(result.annotations)
        } catch {
            throw KMSError(.internalError, "\(backend.name) backend returned output the apiserver would reject: \(error.message)")
        }
    }
}
