// A record, in the state folder, of the wrapped local KEKs a backend issued or unwrapped, so that after a restart it
// can unwrap the most recent ones with one batched call to its root of trust instead of one call per local KEK
// when the apiserver decrypts everything (the "decrypt storm"). Only the wrapped form and metadata are kept, never a
// plaintext key: the wrapped form travels in every ciphertext's annotation anyway.
//
//   {"format": "kekd-issued-keks-v1", "owner": "<who the keys belong to>",
//    "keks": [{"wrapped": "...", "key_version": 3, "created": "<RFC 3339>", "last_used": "<RFC 3339>"}, ...]}
//
// Any backend with local KEKs under a remote key (Vault Transit, a PKCS#11 token) uses it the same way: `note` when
// it issues or unwraps one, `touch` when it uses a cached one, `mostRecent` at start, `save` from its maintenance loop.
import FoundationEssentials
import Glibc
import JSON
import Locking
import Logging

public struct IssuedKEKRecord: Sendable, Equatable {
    /// Exactly as it travels in the annotation (the cache key).
    public var wrapped: String
    /// The version of the root key that wrapped it (Transit key version, PKCS#11 key version).
    public var keyVersion: Int
    public var created: Date
    public var lastUsed: Date

    public init(wrapped: String, keyVersion: Int, created: Date, lastUsed: Date) {
        self.wrapped = wrapped; self.keyVersion = keyVersion; self.created = created; self.lastUsed = lastUsed
    }
}

public final class IssuedKEKStore: Sendable {
    public static let format = "kekd-issued-keks-v1"
    public static let defaultCapacity = 64
    /// A record file larger than this is not ours (64 entries are about 20 KiB).
    static let maxFileBytes = 1 << 20

    public let path: String
    /// Identifies the root key the record belongs to (e.g. Vault address, mount and key name); a record of another
    /// owner is ignored, so a reconfigured kekd never sends foreign wrapped keys to its root of trust.
    public let owner: String
    public let capacity: Int
    private let log: Logger

    private struct Inner {
        var entries: [String: IssuedKEKRecord] = [:]
        /// Entries added or removed since the last save: written soon. Only `lastUsed` changed: written rarely.
        var membershipChanged = false
        var touched = false
        var lastSave: Double = 0
    }
    private let inner = LockedValue(Inner())

    /// - Parameter log: one warning per problem (an unreadable record, a failed save); never key material.
    public init(path: String, owner: String, capacity: Int = IssuedKEKStore.defaultCapacity, log: Logger) {
        self.path = path; self.owner = owner; self.capacity = max(1, capacity); self.log = log
    }

    /// Reads the record into memory and returns it. A missing file is an empty record; a corrupt or foreign one is
    /// logged in one line and treated as empty (a cold start, never a failed one), and is replaced at the next save.
    @discardableResult
    public func load() -> [IssuedKEKRecord] {
        let records: [IssuedKEKRecord]
        switch Self.read(path: path, owner: owner) {
        case .success(let r): records = r
        case .failure(let reason):
            log.warn("ignoring the record of issued local KEKs \(path) (\(reason)); starting with a cold cache")
            records = []
        }
        inner.withLock { s in
            // Entries noted since start (a Decrypt racing the load) are kept.
            for r in records where (s.entries[r.wrapped]?.lastUsed ?? .distantPast) < r.lastUsed { s.entries[r.wrapped] = r }
            Self.trim(&s.entries, to: capacity)
        }
        return records
    }

    /// The `count` most recently used entries, most recent first.
    public func mostRecent(_ count: Int) -> [IssuedKEKRecord] {
        inner.withLock { s in Array(s.entries.values.sorted { $0.lastUsed > $1.lastUsed }.prefix(max(0, count))) }
    }

    public var count: Int { inner.withLock { $0.entries.count } }

    /// A local KEK was issued or unwrapped: add it (or mark it used), dropping the least recently used beyond capacity.
    public func note(wrapped: String, keyVersion: Int, now: Date = Date()) {
        inner.withLock { s in
            if s.entries[wrapped] != nil {
                s.entries[wrapped]?.lastUsed = now
                s.touched = true
                return
            }
            s.entries[wrapped] = IssuedKEKRecord(wrapped: wrapped, keyVersion: keyVersion, created: now, lastUsed: now)
            Self.trim(&s.entries, to: capacity)
            s.membershipChanged = true
        }
    }

    /// A cached local KEK was used: only its `lastUsed` moves (in memory; saved with the next save).
    public func touch(wrapped: String, now: Date = Date()) {
        inner.withLock { s in
            guard s.entries[wrapped] != nil else { return }
            s.entries[wrapped]?.lastUsed = now
            s.touched = true
        }
    }

    /// Drops entries the root of trust refused to unwrap (a deleted key version, a foreign key).
    public func remove(_ wrapped: [String]) {
        inner.withLock { s in
            for w in wrapped where s.entries.removeValue(forKey: w) != nil { s.membershipChanged = true }
        }
    }

    /// Writes the record atomically (mode 0600) when entries changed, or when only use times changed and
    /// `touchInterval` seconds passed since the last write; `force` writes any change (at shutdown). A failed write
    /// is logged and retried at the next call.
    public func save(now: Double, touchInterval: Double = 60, force: Bool = false) {
        let snapshot: [IssuedKEKRecord]? = inner.withLock { s in
            let due = s.membershipChanged || (s.touched && (force || now - s.lastSave >= touchInterval))
            guard due else { return nil }
            s.membershipChanged = false
            s.touched = false
            s.lastSave = now
            return Array(s.entries.values)
        }
        guard let snapshot else { return }
        do {
            try KeyFileStore.writeAtomically(Self.encode(snapshot, owner: owner), to: path, replace: true)
        } catch {
            inner.withLock { $0.membershipChanged = true }
            log.warn("cannot save the record of issued local KEKs \(path): \(error.message)")
        }
    }

    // MARK: Encoding

    static func encode(_ records: [IssuedKEKRecord], owner: String) -> [UInt8] {
        let keks: [JSONValue] = records.sorted { $0.lastUsed > $1.lastUsed }.map { r in
            .object(["wrapped": .string(r.wrapped), "key_version": .number(Double(r.keyVersion)),
                     "created": .string(KeyFile.rfc3339(r.created)), "last_used": .string(KeyFile.rfc3339(r.lastUsed))])
        }
        return JSONValue.object(["format": .string(format), "owner": .string(owner), "keks": .array(keks)]).serialized() + [0x0A]
    }

    /// The record's entries, or why the file is unusable. A missing file is an empty record.
    static func read(path: String, owner: String) -> Result<[IssuedKEKRecord], ReadProblem> {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            return errno == ENOENT ? .success([]) : .failure(ReadProblem("cannot open: \(errnoText(errno))"))
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += buffer[0..<n]
            if bytes.count > maxFileBytes { close(fd); return .failure(ReadProblem("larger than \(maxFileBytes) bytes")) }
        }
        close(fd)
        return decode(bytes, owner: owner)
    }

    struct ReadProblem: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func decode(_ bytes: [UInt8], owner: String) -> Result<[IssuedKEKRecord], ReadProblem> {
        guard let json = JSONValue.parse(bytes) else { return .failure(ReadProblem("not JSON")) }
        guard json["format"]?.string == format else { return .failure(ReadProblem("not a \(format) record")) }
        guard json["owner"]?.string == owner else { return .failure(ReadProblem("it belongs to another key")) }
        guard let items = json["keks"]?.array else { return .failure(ReadProblem("no keks list")) }
        var records: [IssuedKEKRecord] = []
        for item in items {
            guard let wrapped = item["wrapped"]?.string, !wrapped.isEmpty, wrapped.utf8.count <= 4096,
                  let version = item["key_version"]?.int, version >= 1,
                  let createdText = item["created"]?.string, let created = KeyFile.parseRFC3339(createdText),
                  let usedText = item["last_used"]?.string, let lastUsed = KeyFile.parseRFC3339(usedText) else {
                return .failure(ReadProblem("an entry is malformed"))
            }
            records.append(IssuedKEKRecord(wrapped: wrapped, keyVersion: version, created: created, lastUsed: lastUsed))
        }
        return .success(records)
    }

    private static func trim(_ entries: inout [String: IssuedKEKRecord], to capacity: Int) {
        guard entries.count > capacity else { return }
        let keep = entries.values.sorted { $0.lastUsed > $1.lastUsed }.prefix(capacity)
        entries = Dictionary(uniqueKeysWithValues: keep.map { ($0.wrapped, $0) })
    }
}
