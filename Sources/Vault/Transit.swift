// The three Transit calls kekd makes: read the key's metadata, encrypt a local KEK under an explicit version, and
// decrypt wrapped local KEKs in batches.
import FoundationEssentials
import HTTPClient
import JSON
import Glibc
import GRPCCodes
import KMS

public struct TransitKeyInfo: Sendable, Equatable {
    public var latestVersion: Int
    /// Version → creation time (unix seconds) as Vault reports it.
    public var versionCreated: [Int: Int64]
    public var minDecryptionVersion: Int
    public var minEncryptionVersion: Int
    public var supportsEncryption: Bool
    public var type: String
}

final class TransitAPI: Sendable {
    let client: VaultClient
    let tokens: TokenManager
    let mount: String
    let keyName: String
    let requestTimeout: Double

    init(client: VaultClient, tokens: TokenManager, mount: String, keyName: String, requestTimeout: Double) {
        self.client = client; self.tokens = tokens; self.mount = mount; self.keyName = keyName
        self.requestTimeout = requestTimeout
    }

    /// The stack every Transit user builds on the configuration: HTTPS client (certificate checks always on), the
    /// retrying Vault client, the token manager, the Transit calls.
    static func make(configuration: VaultConfiguration, onCall: BackendCallHook?) throws(KMSError) -> TransitAPI {
        var tls = configuration.tls
        tls.insecureSkipVerify = false
        let http: HTTPSClient
        do { http = try HTTPSClient(endpoint: configuration.endpoint, tls: tls, connectTimeout: configuration.connectTimeout) }
        catch { throw KMSError(.invalidArgument, "Vault TLS setup: \(error.description)") }
        let client = VaultClient(http: http, breaker: CircuitBreaker(), backoff: Backoff(), requestTimeout: configuration.requestTimeout,
                                 namespace: configuration.namespace, onCall: onCall)
        return TransitAPI(client: client, tokens: TokenManager(method: configuration.auth, client: client), mount: configuration.transitMount,
                          keyName: configuration.keyName, requestTimeout: configuration.requestTimeout)
    }

    private func call(_ op: BackendOperation, _ method: String, _ path: String, _ body: JSONValue?, deadline: Date) throws(KMSError) -> VaultReply {
        try tokens.withToken(deadline: deadline) { (token: String) throws(KMSError) -> VaultReply in
            try client.request(op: op, method: method, path: path, body: body, token: token, deadline: deadline)
        }
    }

    /// The error for a reply that says the key is gone: 404 on a read, or Vault's 400 "encryption key not found" from
    /// encrypt and decrypt. FAILED_PRECONDITION, which the keyring treats as "stop using every local KEK".
    private func keyGone(_ reply: VaultReply) -> KMSError? {
        let notFound = reply.status == 404 || (reply.status == 400 && reply.errorText.contains("encryption key not found"))
        return notFound ? KMSError(.failedPrecondition, "Vault transit key \(mount)/\(keyName) does not exist") : nil
    }

    func readKey(deadline: Date) throws(KMSError) -> TransitKeyInfo {
        let reply = try call(.readKey, "GET", "\(mount)/keys/\(keyName)", nil, deadline: deadline)
        guard reply.status == 200 else { throw keyGone(reply) ?? VaultClient.error("read key \(keyName)", reply) }
        let data = reply.data
        guard let latest = data["latest_version"]?.int, latest > 0 else {
            throw KMSError(.unavailable, "Vault key read: no latest_version")
        }
        var created: [Int: Int64] = [:]
        for (version, value) in data["keys"]?.object ?? [:] {
            guard let v = Int(version) else { continue }
            if let seconds = value.int { created[v] = Int64(seconds) }
            else if let text = value["creation_time"]?.string { created[v] = Self.unixTime(text) }
            else if let text = value.string { created[v] = Self.unixTime(text) }
        }
        return TransitKeyInfo(latestVersion: latest, versionCreated: created,
                              minDecryptionVersion: data["min_decryption_version"]?.int ?? 1,
                              minEncryptionVersion: data["min_encryption_version"]?.int ?? 0,
                              supportsEncryption: data["supports_encryption"]?.bool ?? true,
                              type: data["type"]?.string ?? "")
    }

    /// RFC 3339 → unix seconds; 0 when unparsable (still deterministic for the key_id).
    static func unixTime(_ text: String) -> Int64 {
        let date = (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text))
            ?? (try? Date.ISO8601FormatStyle().parse(text))
        return date.map { Int64($0.timeIntervalSince1970) } ?? 0
    }

    /// Encrypts `plaintext` under exactly `keyVersion`; returns Vault's `vault:vN:...` ciphertext.
    func encrypt(_ plaintext: [UInt8], keyVersion: Int, deadline: Date) throws(KMSError) -> String {
        let body: JSONValue = ["plaintext": .string(Data(plaintext).base64EncodedString()), "key_version": .number(Double(keyVersion))]
        let reply = try call(.encrypt, "POST", "\(mount)/encrypt/\(keyName)", body, deadline: deadline)
        guard reply.status == 200 else { throw keyGone(reply) ?? VaultClient.error("encrypt", reply) }
        guard let ciphertext = reply.data["ciphertext"]?.string, ciphertext.hasPrefix("vault:v\(keyVersion):") else {
            throw KMSError(.unavailable, "Vault encrypt returned no ciphertext for version \(keyVersion)")
        }
        return ciphertext
    }

    /// Decrypts many ciphertexts in one request. Per-item failures come back as per-item errors.
    func decryptBatch(_ ciphertexts: [String], deadline: Date) throws(KMSError) -> [Result<[UInt8], KMSError>] {
        let body: JSONValue = ["batch_input": .array(ciphertexts.map { ["ciphertext": .string($0)] })]
        let reply = try call(.decrypt, "POST", "\(mount)/decrypt/\(keyName)", body, deadline: deadline)
        // Vault answers 400 when any item failed but still lists every item's result.
        guard reply.status == 200 || reply.status == 400, let results = reply.data["batch_results"]?.array else {
            throw keyGone(reply) ?? VaultClient.error("decrypt", reply)
        }
        guard results.count == ciphertexts.count else {
            throw KMSError(.unavailable, "Vault decrypt returned \(results.count) results for \(ciphertexts.count) inputs")
        }
        return results.map { item in
            if let error = item["error"]?.string, !error.isEmpty {
                // Vault's refusal below the key's min_decryption_version: retired on purpose, not a bad ciphertext.
                let code: GRPCStatusCode = error.contains("disallowed by policy (too old)") ? .failedPrecondition : .invalidArgument
                let hint = code == .failedPrecondition ? " (below the key's min_decryption_version)" : ""
                return .failure(KMSError(code, "Vault decrypt: \(VaultReply.oneLine(error, limit: 200))\(hint)"))
            }
            guard let text = item["plaintext"]?.string, let bytes = Data(base64Encoded: text) else {
                return .failure(KMSError(.invalidArgument, "Vault decrypt returned no plaintext"))
            }
            return .success([UInt8](bytes))
        }
    }
}
