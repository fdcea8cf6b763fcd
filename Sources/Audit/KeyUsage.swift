// Last successful Encrypt / Decrypt per key_id, kept from the audit stream for `kekctl list` and `kekctl retire`.
// File format (a contract with kekctl): {"keys":{"<key_id>":{"last_encrypt":"<RFC3339>","last_decrypt":"<RFC3339>"}}}
// A missing or null time means "not seen". Written atomically, mode 0600.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

public struct KeyUsageRecord: Codable, Sendable, Equatable {
    public var lastEncrypt: Date?
    public var lastDecrypt: Date?

    public init(lastEncrypt: Date? = nil, lastDecrypt: Date? = nil) {
        self.lastEncrypt = lastEncrypt
        self.lastDecrypt = lastDecrypt
    }

    enum CodingKeys: String, CodingKey {
        case lastEncrypt = "last_encrypt"
        case lastDecrypt = "last_decrypt"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        lastEncrypt = try Self.decodeTime(c, .lastEncrypt)
        lastDecrypt = try Self.decodeTime(c, .lastDecrypt)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        if let lastEncrypt { try c.encode(RFC3339.format(lastEncrypt), forKey: .lastEncrypt) }
        if let lastDecrypt { try c.encode(RFC3339.format(lastDecrypt), forKey: .lastDecrypt) }
    }

    private static func decodeTime(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> Date? {
        guard let text = try c.decodeIfPresent(String.self, forKey: key) else { return nil }
        guard let date = RFC3339.parse(text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "not an RFC 3339 time: \(text)")
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
    private struct Contents: Codable { var keys: [String: KeyUsageRecord] }
    /// The file is small (one entry per key version); anything larger is not ours.
    static let maxFileSize = 16 << 20

    /// The usage per key_id. Throws (never traps) on a missing, unreadable or malformed file.
    public static func load(path: String) throws -> [String: KeyUsageRecord] {
        let bytes = try POSIXFile.read(path: path, limit: maxFileSize)
        do {
            return try JSONDecoder().decode(Contents.self, from: Data(bytes)).keys
        } catch {
            throw AuditError("malformed key usage file \(path): \(error)")
        }
    }

    /// Replaces the file atomically (temp file, fsync, rename, fsync the folder), mode 0600.
    public static func write(_ usage: [String: KeyUsageRecord], path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(Contents(keys: usage))
        try POSIXFile.atomicWrite(path: path, bytes: Array(data) + [0x0A])
    }
}

/// The writer's running view of key usage. Counts every successful Encrypt/Decrypt it sees, whether or not its
/// record reached the sink: for retirement decisions a lost record must not make a key look unused.
struct KeyUsageTracker {
    let path: String?
    private(set) var usage: [String: KeyUsageRecord] = [:]
    private(set) var dirty = false

    init(path: String?) {
        self.path = path
        guard let path, access(path, F_OK) == 0 else { return }
        do {
            usage = try KeyUsageFile.load(path: path)
        } catch {
            AuditDiagnostics.log("key usage file unreadable; starting empty", fields: [("error", "\(error)")])
        }
    }

    /// The usage a successful Encrypt or Decrypt event shows; nil for anything else.
    static func usage(of event: AuditEvent) -> (keyID: String, record: KeyUsageRecord)? {
        guard event.outcome == "OK", let keyID = event.keyID, !keyID.isEmpty else { return nil }
        switch event.op {
        case "Encrypt": return (keyID, KeyUsageRecord(lastEncrypt: event.time))
        case "Decrypt": return (keyID, KeyUsageRecord(lastDecrypt: event.time))
        default: return nil
        }
    }

    mutating func note(_ event: AuditEvent) {
        guard path != nil, let (keyID, record) = Self.usage(of: event) else { return }
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
        guard dirty, let path else { return }
        do {
            try KeyUsageFile.write(usage, path: path)
            dirty = false
        } catch {
            AuditDiagnostics.log("cannot write key usage file", fields: [("error", "\(error)")])
        }
    }
}
