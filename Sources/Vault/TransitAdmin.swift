// Operator actions on the Transit key for `kekctl rotate-cluster`: read it, rotate it, and raise
// min_decryption_version to retire old versions. These need an operator token with update rights on
// `transit/keys/NAME/rotate` and `transit/keys/NAME/config`, which kekd's own policy must not grant.
import FoundationEssentials
import JSON
import KMS

public final class TransitAdmin: Sendable {
    public let configuration: VaultConfiguration
    let transit: TransitAPI

    public init(configuration: VaultConfiguration) throws(KMSError) {
        self.configuration = configuration
        transit = try TransitAPI.make(configuration: configuration, onCall: nil)
    }

    private var deadline: Date { Date(timeIntervalSinceNow: max(configuration.requestTimeout * 4, 10)) }
    private var keyPath: String { "\(configuration.transitMount)/keys/\(configuration.keyName)" }

    public func readKey() throws(KMSError) -> TransitKeyInfo { try transit.readKey(deadline: deadline) }

    /// The key_id kekd reports once it encrypts under `version` (the same derivation as kekd's keyring).
    public func keyID(version: Int, info: TransitKeyInfo) -> String {
        VaultKeyring.keyID(config: configuration, version: version, created: info.versionCreated[version] ?? 0)
    }

    /// The Vault version behind a key_id kekd reported, when it is one of this key's versions.
    public func version(ofKeyID keyID: String, info: TransitKeyInfo) -> Int? {
        info.versionCreated.keys.first { self.keyID(version: $0, info: info) == keyID }
    }

    private func post(_ op: BackendOperation, _ path: String, _ body: JSONValue?) throws(KMSError) {
        let d = deadline
        let reply = try transit.tokens.withToken(deadline: d) { (token: String) throws(KMSError) -> VaultReply in
            try transit.client.request(op: op, method: "POST", path: path, body: body, token: token, deadline: d)
        }
        guard (200...299).contains(reply.status) else { throw VaultClient.error(op.rawValue, reply) }
    }

    /// `POST transit/keys/NAME/rotate`: a new latest version.
    public func rotate() throws(KMSError) { try post(.rotate, "\(keyPath)/rotate", nil) }

    /// `POST transit/keys/NAME/config {min_decryption_version}`: versions below it stop decrypting.
    public func setMinDecryptionVersion(_ version: Int) throws(KMSError) {
        try post(.config, "\(keyPath)/config", .object(["min_decryption_version": .number(Double(version))]))
    }
}
