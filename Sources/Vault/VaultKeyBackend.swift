// The KMS-facing adapter: `KeyBackend` over `VaultKeyring` (which already speaks `KMSError`).
import FoundationEssentials
import Glibc
import KMS
import Logging

public final class VaultKeyBackend: KeyBackend {
    public let keyring: VaultKeyring

    /// Builds the backend and starts its background loop (token upkeep, key polling). Network problems do not
    /// throw: the backend keeps retrying and Status reports them. Throws only for a configuration that cannot work
    /// (e.g. an unreadable CA file or a client key that does not match its certificate).
    /// - Parameters:
    ///   - onBackendCall: one call per Vault request: op (`login`, `lookup_self`, `renew_self`, `read_key`,
    ///     `encrypt`, `decrypt`), result (`ok` or a gRPC code name), seconds including retries.
    ///   - onCache: one call per Decrypt: whether the local KEK was cached.
    ///   - log: outage begins/ends, new local KEK (each line carries `"backend":"vault"`).
    public init(configuration: VaultConfiguration,
                onBackendCall: BackendCallHook? = nil,
                onCache: (@Sendable (_ hit: Bool) -> Void)? = nil,
                log: Logger) throws(KMSError) {
        keyring = try VaultKeyring(configuration: configuration, onBackendCall: onBackendCall, onCache: onCache,
                                   log: log.with(["backend": "vault"]))
    }

    /// Waits (at most `timeout` seconds) until a local KEK is ready; kekd can call this before serving.
    public func waitUntilReady(timeout: Double) -> Bool { keyring.waitUntilReady(timeout: timeout) }

    public var name: String { "vault" }

    public func wouldBlock(_ call: BackendCall) -> Bool {
        switch call {
        case .encrypt: return keyring.encryptWouldBlock()
        case .decrypt(_, let annotations): return keyring.decryptWouldBlock(annotations: annotations)
        }
    }

    public func status() -> BackendStatus {
        let health = keyring.health()
        if keyring.configuration.decryptOnly {
            return BackendStatus(healthy: health.canDecrypt, keyID: "", detail: health.detail)
        }
        // An empty key_id when we cannot encrypt makes the apiserver's probe fail instead of extending its write DEK.
        return BackendStatus(healthy: health.canEncrypt, keyID: health.canEncrypt ? health.keyID : "", detail: health.detail)
    }

    public func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        let envelope = try keyring.encrypt(plaintext, context: context)
        return EncryptResult(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations)
    }

    public func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                        context: CallContext) throws(KMSError) -> [UInt8] {
        try keyring.decrypt(ciphertext: ciphertext, keyID: keyID, annotations: annotations, context: context)
    }

    public func reload() { keyring.reload() }

    public func close() { keyring.close() }
}
