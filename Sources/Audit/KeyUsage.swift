// Last successful Encrypt / Decrypt per key_id, kept from the audit stream for `kekctl list` and `kekctl retire`.
// File format (a contract with kekctl): {"keys":{"<key_id>":{"last_encrypt":"<RFC3339>","last_decrypt":"<RFC3339>"}}}
// A missing or null time means "not seen". Written atomically, mode 0600.
import FoundationEssentials
import JSON
#if canImport(Glibc)
import Glibc
import Logging
#endif

public struct KeyUsageRecord: Sendable, Equatable {
    public var lastEncrypt: Date?
    public var lastDecrypt: Date?

    public init(lastEncrypt: Date? = nil, lastDecrypt: Date? = nil) {
        self.lastEncrypt = lastEncrypt
        self.lastDecrypt = lastDecrypt
    }

    /// `{"last_encrypt": "<RFC 3339>", "last_decrypt": ...}`; a missing or null time is "not seen".
    init(json: JSONValue) throws(AuditError) {
        guard json.object != nil else { throw AuditError("a key usage entry is not an object") }
        lastEncrypt = try Self.time(json["last_encrypt"])
        lastDecrypt = try Self.time(json["last_decrypt"])
    }

    var json: JSONValue {
        var o: [String: JSONValue] = [:]
        if let lastEncrypt { o["last_encrypt"] = .string(RFC3339.format(lastEncrypt)) }
        if let lastDecrypt { o["last_decrypt"] = .string(RFC3339.format(lastDecrypt)) }
        return .object(o)
    }

    private static func time(_ value: JSONValue?) throws(AuditError) -> Date? {
        guard let value, !value.isNull else { return nil }
        guard let text = value.string, let date = RFC3339.parse(text) else {
            throw AuditError("not an RFC 3339 time in a key usage entry")
        }
        return date
    }

    /// Keeps the later of each time.
    mutating func merge(_ other: KeyUsageRecord) {
        lastEncrypt = Self.later(lastEncrypt, other.lastEncrypt)
        lastDecrypt = Self.later(lastDecrypt, other.lastDecrypt)
    }

    private static func later(_ a: Date?, _ b: Date?) -> Date? {
        guard let a else { return b }
        guard let b else { return a }
        return max(a, b)
    }
}

public enum KeyUsageFile {
    /// The file is small (one entry per key version); anything larger is not ours.
    static let maxFileSize = 16 << 20

    /// The usage per key_id. Throws (never traps) on a missing, unreadable or malformed file.
    public static func load(path: String) throws -> [String: KeyUsageRecord] {
        let bytes = try POSIXFile.read(path: path, limit: maxFileSize)
        guard let keys = JSONValue.parse(bytes)?["keys"]?.object else {
            throw AuditError("malformed key usage file \(path): not {\"keys\": {...}}")
        }
        var usage: [String: KeyUsageRecord] = [:]
        for (keyID, entry) in keys {
            do { usage[keyID] = try KeyUsageRecord(json: entry) } catch {
                throw AuditError("malformed key usage file \(path): \(error)")
            }
        }
        return usage
    }

    /// Replaces the file atomically (temp file, fsync, rename, fsync the folder), mode 0600.
    public static func write(_ usage: [String: KeyUsageRecord], path: String) throws {
        let contents: JSONValue = ["keys": .object(usage.mapValues(\.json))]
        try POSIXFile.atomicWrite(path: path, bytes: contents.serialized() + [0x0A])
    }
}

/// The writer's running view of key usage. Counts every successful Encrypt/Decrypt it sees, whether or not its
/// record reached the sink: for retirement decisions a lost record must not make a key look unused.
struct KeyUsageTracker {
    let path: String?
    private(set) var usage: [String: KeyUsageRecord] = [:]
    private(set) var dirty = false
    /// The key of the last records noted and their usage, not yet in `usage`: a run of records of one key (the
    /// usual batch) costs a string comparison each and one dictionary update at `settle()`.
    private var recent: (keyID: String, record: KeyUsageRecord)?
    private let log: Logger

    init(path: String?, log: Logger) {
        self.path = path
        self.log = log
        guard let path, access(path, F_OK) == 0 else { return }
        do {
            usage = try KeyUsageFile.load(path: path)
        } catch {
            log.error("key usage file unreadable; starting empty", ["error": "\(error)"])
        }
    }

    /// The usage a successful Encrypt or Decrypt event shows; nil for anything else.
    static func usage(of event: borrowing AuditEvent) -> (keyID: String, record: KeyUsageRecord)? {
        // Comparisons of short strings (a word or two each), the op first: a string `switch` cost a search per record.
        let encrypt = event.op == "Encrypt"
        guard encrypt || event.op == "Decrypt", event.outcome == "OK", let keyID = event.keyID, !keyID.isEmpty else {
            return nil
        }
        return (keyID, encrypt ? KeyUsageRecord(lastEncrypt: event.time) : KeyUsageRecord(lastDecrypt: event.time))
    }

    /// A record's usage (`usage(of:)`); call `settle()` after the batch.
    mutating func note(_ keyID: String, _ record: KeyUsageRecord) {
        if recent?.keyID == keyID {
            recent?.record.merge(record)
        } else {
            settle()
            recent = (keyID, record)
        }
    }

    /// Moves what `note` gathered into `usage` (and `dirty`).
    mutating func settle() {
        guard let (keyID, record) = recent else { return }
        recent = nil
        merge(keyID, record)
    }

    mutating func merge(_ keyID: String, _ record: KeyUsageRecord) {
        let before = usage[keyID]
        var updated = before ?? KeyUsageRecord()
        updated.merge(record)
        if updated != before {
            usage[keyID] = updated
            dirty = true
        }
    }

    mutating func flush() {
        settle()
        guard dirty, let path else { return }
        do {
            try KeyUsageFile.write(usage, path: path)
            dirty = false
        } catch {
            log.error("cannot write key usage file", ["error": "\(error)"])
        }
    }
}
