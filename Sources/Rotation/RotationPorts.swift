// What the rotation state machine talks to, as protocols: the real cluster, key backend and kekd in kekctl, fakes
// in the unit tests. Every method is one bounded call; retries and pacing belong to the state machine.
import JSON

/// The control plane's apiservers as seen from outside: discovery, KMS readiness and the key each one encrypts with.
public protocol APIServerFleet: Sendable {
    /// Every apiserver, by the base URL the other calls take.
    func discover() throws(RotationError) -> [String]
    /// `GET /readyz/kms-providers` on that apiserver: nil when ok, else the reason.
    func kmsReadiness(_ apiserver: String) throws(RotationError) -> String?
    /// The `key_id_hash` of the provider's most recently reported key, from the apiserver's own /metrics (the series of
    /// `apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds` with the newest timestamp); nil when
    /// the apiserver reports none for the provider.
    func currentKeyIDHash(_ apiserver: String, provider: String) throws(RotationError) -> String?
}

/// A Kubernetes API failure the migrate phase reacts to.
public enum APIFailure: Error, Sendable, Equatable {
    case notFound
    case conflict
    /// The list's `continue` token expired (410 Gone).
    case expired
    case tooManyRequests(retryAfter: Double)
    case server(status: Int, message: String)
    /// No answer, or an answer the caller cannot act on (e.g. 401/403): not retried.
    case fatal(String)
}

public struct ObjectPage: Sendable {
    public var items: [JSONValue]
    public var continueToken: String?
    /// `metadata.remainingItemCount` when the apiserver gives it.
    public var remaining: Int?
    public init(items: [JSONValue], continueToken: String?, remaining: Int?) {
        self.items = items; self.continueToken = continueToken; self.remaining = remaining
    }
}

/// The Kubernetes objects the migrate phase rewrites.
public protocol ObjectStore: Sendable {
    func list(resource: String, limit: Int, continueToken: String?) throws(APIFailure) -> ObjectPage
    /// The current version of the object named like `object` (namespace and name from its metadata).
    func get(resource: String, like object: JSONValue) throws(APIFailure) -> JSONValue
    /// PUT the object back unchanged, with its resourceVersion: the apiserver rewrites it only when it is stale.
    func replace(resource: String, object: JSONValue) throws(APIFailure)
}

/// A key backend's operator-side actions. Each is idempotent, so a resumed run may call it again.
public protocol KeyRotator: Sendable {
    var backend: String { get }
    /// Makes a new key version that every node can decrypt with but none encrypts with yet, and returns its key_id.
    /// When a version newer than `oldKeyID` already exists (an earlier run got this far) it returns that one.
    func stage(oldKeyID: String, log: (String) -> Void) throws(RotationError) -> String
    /// Brings the change to every node (the sync command, or instructions for the operator). Vault: nothing to do.
    func distribute(log: (String) -> Void) throws(RotationError)
    /// Makes `newKeyID` the version every node encrypts with.
    func promote(newKeyID: String, log: (String) -> Void) throws(RotationError)
    /// Stops the old version from decrypting (after the data was migrated and verified).
    func retire(oldKeyID: String, newKeyID: String, log: (String) -> Void) throws(RotationError)
    /// The command an operator runs to retire later (shown when `--retire` was not given).
    func retireCommand(oldKeyID: String, newKeyID: String) -> String
}

/// This node's kekd.
public protocol PluginProbe: Sendable {
    func keyID() throws(RotationError) -> String
}

/// The proof that no stored object is left under another key.
public protocol MigrationVerifier: Sendable {
    /// Returns what was checked ("census" or "metrics") and a line to print; throws when the proof fails.
    func verify(newKeyID: String, resources: [String], log: (String) -> Void) throws(RotationError) -> (method: String, summary: String)
}

/// Time, pauses and interruption, injectable so tests run without waiting.
public protocol RotationClock: Sendable {
    func now() -> Double
    func sleep(_ seconds: Double)
    /// Whether the operator asked to stop (SIGINT/SIGTERM): the run saves its state and ends at the next step.
    func interrupted() -> Bool
}
