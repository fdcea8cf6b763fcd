// The audit log's public value types. The event type deliberately has no field that could hold plaintext, key
// material, tokens or annotation values: what cannot be represented cannot be logged by mistake.
import FoundationEssentials
import Glibc
import PeerIdentity

/// One call, described after its outcome is known.
public struct AuditEvent: Sendable {
    /// When the call arrived.
    public var time: Date
    /// "Status" | "Encrypt" | "Decrypt" | the raw :path for anything else.
    public var op: String
    /// The apiserver's request id.
    public var uid: String?
    public var keyID: String?
    /// "file" | "vault" | "" when the call never reached a backend.
    public var backend: String
    /// gRPC status code name: "OK", "INVALID_ARGUMENT", ...
    public var outcome: String
    /// Why the call failed (never key material or plaintext: KMSError's contract).
    public var message: String?
    public var latencyMicros: Int64
    /// The connected process, from SO_PEERCRED.
    public var peer: PeerCredentials?
    public var connection: UInt64
    public var stream: UInt32
    /// Encrypt result / Decrypt input. Only a 16-hex SHA-256 prefix is logged, computed on the writer thread.
    public var ciphertext: [UInt8]?

    @inlinable
    public init(time: Date, op: String, uid: String? = nil, keyID: String? = nil, backend: String,
                outcome: String, message: String? = nil, latencyMicros: Int64, peer: PeerCredentials? = nil,
                connection: UInt64 = 0, stream: UInt32 = 0, ciphertext: [UInt8]? = nil) {
        self.time = time
        self.op = op
        self.uid = uid
        self.keyID = keyID
        self.backend = backend
        self.outcome = outcome
        self.message = message
        self.latencyMicros = latencyMicros
        self.peer = peer
        self.connection = connection
        self.stream = stream
        self.ciphertext = ciphertext
    }
}

public enum AuditMode: String, Sendable {
    /// record() never blocks; losses are counted and reported in the next record and on stderr.
    case bestEffort = "best-effort"
    /// record() returns only after the record is written and fsynced; false when it could not be.
    case failClosed = "fail-closed"
}

public struct AuditConfiguration: Sendable {
    /// A file path (created 0600), any writable path such as a character device, or "-" for stdout.
    public var path: String
    /// Rotate a regular file before it would grow beyond this many bytes; 0 disables rotation.
    public var maxSize: Int64
    /// Rotated files kept: PATH.1 (newest) … PATH.maxFiles (oldest). 0 keeps none.
    public var maxFiles: Int
    public var mode: AuditMode
    /// Key of the HMAC chain (at least 16 bytes; kekd derives 32 from the KEK or reads --audit-hmac-key-file).
    public var hmacKey: [UInt8]
    /// Records waiting for the writer; best-effort drops beyond it, fail-closed waits for room.
    public var queueCapacity: Int
    /// Where the per-key last Encrypt / last Decrypt times are kept (nil: not kept).
    public var usageFilePath: String?
    /// Seconds between usage file flushes (it is also flushed on close).
    public var usageFlushInterval: Double
    /// fail-closed: the longest record() waits for its record to be written and synced (a stuck sink, e.g. a
    /// FIFO nobody reads, must not hang calls); it then returns false.
    public var failClosedTimeout: Double
    /// When the existing log does not verify under `hmacKey` (its chain key is missing or was replaced): false
    /// refuses to open (the old chain could no longer be verified, silently); true rotates it away and starts a new
    /// chain whose first record says so (kekd's --audit-new-chain).
    public var allowNewChain: Bool

    public init(path: String, maxSize: Int64 = 100 << 20, maxFiles: Int = 5, mode: AuditMode = .bestEffort,
                hmacKey: [UInt8], queueCapacity: Int = 65536, usageFilePath: String? = nil,
                usageFlushInterval: Double = 10, failClosedTimeout: Double = 10, allowNewChain: Bool = false) {
        self.path = path
        self.maxSize = maxSize
        self.maxFiles = maxFiles
        self.mode = mode
        self.hmacKey = hmacKey
        self.queueCapacity = queueCapacity
        self.usageFilePath = usageFilePath
        self.usageFlushInterval = usageFlushInterval
        self.failClosedTimeout = failClosedTimeout
        self.allowNewChain = allowNewChain
    }
}

public struct AuditStats: Sendable, Equatable {
    /// Records written to the sink (and fsynced in fail-closed mode).
    public var written: Int
    /// best-effort: records lost (queue full or sink failure).
    public var dropped: Int
    /// fail-closed: records that could not be written, so their calls were refused.
    public var failed: Int
    public var queueDepth: Int
    /// Successful fdatasync calls (fail-closed group commits; written / syncs = records per sync).
    public var syncs: Int
    public var lastError: String?
}

public struct AuditError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
