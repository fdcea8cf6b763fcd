// The three KMS v2 calls: request validation in front of a KeyBackend, and a check of what the backend returns
// against the apiserver's own limits, so a bad request never reaches a backend and the apiserver never receives
// something it would reject.
import KMSProto

public final class KMSService: Sendable {
    /// The Status `version` values kube-apiserver accepts; kekd should refuse any other flag value.
    public static let supportedStatusVersions = ["v2", "v2beta1"]

    public let backend: any KeyBackend
    public let statusVersion: String

    public init(backend: any KeyBackend, statusVersion: String = "v2") {
        self.backend = backend
        self.statusVersion = statusVersion
    }

    /// Cached state only (the backend's `status()` does no I/O). healthz is "ok" exactly when the backend is healthy.
    /// key_id is the backend's primary key_id; a backend with none yet reports an empty key_id, which the apiserver
    /// counts as an invalid Status, so it stops extending its write DEK (kms-v2-facts 2.2).
    public func status(_ request: StatusRequest) -> StatusResponse {
        let state = backend.status()
        let healthz = state.healthy ? "ok" : (state.detail.isEmpty ? "unhealthy" : "unhealthy: " + state.detail)
        return StatusResponse(version: statusVersion, healthz: healthz, keyID: state.keyID)
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
