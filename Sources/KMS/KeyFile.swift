// The local backend's key file: several KEK versions, a random file id, a format version and a checksum.
//
// On disk (JSON, mode 0600):
//   {
//     "kind": "kekd-key-file",
//     "format_version": 1,
//     "file_id": "<32 hex: 16 random bytes from `init`>",
//     "audit_secret": "<base64: 32 bytes, the stable input of the audit-chain HMAC key>",
//     "versions": [ {"version": 1, "state": "primary", "created": "<RFC 3339 UTC>", "key": "<base64: 32 bytes>"}, ... ],
//     "checksum": "sha256:<hex of SHA-256 over the canonical content, see `canonicalContent`>"
//   }
// The checksum detects corruption (a flipped byte, truncation, a hand edit); it is not a MAC, the file's mode and
// owner are what protect it.
//
// The first format (the wire issue's `--key-file`) is a single raw key: exactly 32 bytes, or 44 characters of base64
// with an optional trailing newline. A key that is printable text (a passphrase, say) is refused. It loads as version
// 1, primary, with a file id derived from the key (`legacyFileID`), so its key_id is stable across restarts and
// machines and can never collide with the key_id of a file made by `init` (whose file id is random). The first
// `rotate`/`retire` rewrites it in the JSON format, keeping that derived file id and an audit secret derived from the
// key (one-way, so pruning version 1 later really removes the key).
//
// The legacy key_id is published (etcd, /metrics, logs), so it must not be a cheap test of a guessed key. Options:
// a constant reveals nothing but hides a key change from kube-apiserver (it re-seeds only when the key_id changes);
// a random id cannot be kept (the format has nowhere to store it, and every node must compute the same one); a fast
// keyed hash is still a one-hash-per-guess oracle. So: refuse text keys (the guessable ones), and derive the file id
// through PBKDF2 (`legacyFileIDIterations`), making each guess of a remaining weak key cost that many HMACs. The first
// release derived it with one SHA-256 (`firstReleaseLegacyKeyID`); Decrypt still accepts that key_id for version 1,
// which the AAD binds, so ciphertexts stored before keep decrypting.
import Crypto
import FoundationEssentials
import JSON
import Glibc

public enum KeyState: String, Sendable, Codable, CaseIterable {
    /// Encrypts (exactly one per file) and decrypts.
    case primary
    /// Decrypts only.
    case active
    /// Kept in the file but refused: Decrypt fails with FAILED_PRECONDITION.
    case retired
}

public struct KeyVersion: Sendable {
    public var version: UInt32
    public var state: KeyState
    /// RFC 3339 UTC, e.g. "2026-11-25T13:40:00Z".
    public var created: String
    /// The 32-byte KEK. Never printed or logged.
    public var key: [UInt8]
}

public struct KeyFile: Sendable, Equatable {
    public static let kind = "kekd-key-file"
    public static let currentFormatVersion = 1
    public static let fileIDSize = 16
    static let keyIDLabel = Array("kekd key_id v1\u{0}".utf8)
    static let legacyFileIDLabel = Array("kekd legacy key file id v2".utf8)
    static let legacyFileIDIterations = 100_000
    static let firstReleaseLegacyFileIDLabel = Array("kekd legacy key file id v1\u{0}".utf8)
    static let legacyAuditSecretLabel = Array("kekd legacy key file audit secret v1".utf8)
    static let auditHMACInfo = Array("kekd audit-chain hmac key v1".utf8)

    public var fileID: [UInt8]
    public var auditSecret: [UInt8]
    /// Sorted by version.
    public var versions: [KeyVersion]
    /// True when read from the first (single raw key) format; a write converts it.
    public internal(set) var isLegacyFormat = false

    /// key_id of a version: `kekd-v<version>-<24 hex>`, the hex being the first 12 bytes of
    /// SHA-256("kekd key_id v1\0" || file id || version as UInt32 big-endian). Opaque to the apiserver, non-secret,
    /// short, and different for every (file, version), so a recreated file never reuses a key_id.
    public static func keyID(fileID: [UInt8], version: UInt32) -> String {
        let digest = SHA256.hash(keyIDLabel + fileID + bigEndianBytes(version))
        return "kekd-v\(version)-" + hexString(digest.prefix(12))
    }

    public func keyID(forVersion version: UInt32) -> String { Self.keyID(fileID: fileID, version: version) }

    public var primary: KeyVersion? { versions.first { $0.state == .primary } }

    public func version(withKeyID keyID: String) -> KeyVersion? {
        versions.first { self.keyID(forVersion: $0.version) == keyID }
    }

    /// The audit chain's HMAC key: HKDF-SHA256(input key: audit secret, salt: file id,
    /// info: "kekd audit-chain hmac key v1", 32 bytes). The audit secret is random at `init` and never changes with
    /// rotation or pruning, so `kekctl audit verify --key-file` recomputes the same key for every log ever written
    /// with this file.
    public func auditHMACKey() throws(KMSError) -> [UInt8] {
        do {
            return try HKDFSHA256.derive(inputKey: auditSecret, salt: fileID, info: Self.auditHMACInfo, length: 32)
        } catch {
            throw KMSError(.internalError, "deriving the audit HMAC key: \(error)")
        }
    }

    // MARK: Lifecycle operations

    /// A new file: random file id, random audit secret, one primary version.
    public static func generate(now: Date = Date()) throws(KMSError) -> KeyFile {
        do {
            return KeyFile(fileID: try SecureRandom.bytes(fileIDSize), auditSecret: try SecureRandom.bytes(32),
                           versions: [KeyVersion(version: 1, state: .primary, created: rfc3339(now),
                                                 key: try SecureRandom.bytes(AES256GCM.keySize))])
        } catch {
            throw KMSError(.internalError, "random key generation: \(error)")
        }
    }

    /// Adds a new primary (highest version + 1) and demotes the old primary to active.
    @discardableResult
    public mutating func rotate(now: Date = Date()) throws(KMSError) -> (old: KeyVersion, new: KeyVersion) {
        guard versions.contains(where: { $0.state == .primary }) else {
            throw KMSError(.failedPrecondition, "key file has no primary version")
        }
        let staged = try stage(now: now)
        return try promote(version: staged.version)
    }

    /// Adds a new decrypt-only version (highest + 1) without changing the primary: the first half of a rotation on
    /// a control plane with several nodes. Once every node's key file has it, `promote` makes it the primary, and no
    /// node ever meets a ciphertext under a version it does not have.
    @discardableResult
    public mutating func stage(now: Date = Date()) throws(KMSError) -> KeyVersion {
        let highest = versions.map(\.version).max() ?? 0
        guard highest < UInt32.max else { throw KMSError(.failedPrecondition, "key versions exhausted") }
        let key: [UInt8]
        do { key = try SecureRandom.bytes(AES256GCM.keySize) } catch {
            throw KMSError(.internalError, "random key generation: \(error)")
        }
        let staged = KeyVersion(version: highest + 1, state: .active, created: Self.rfc3339(now), key: key)
        versions.append(staged)
        return staged
    }

    /// Makes an active version newer than the primary the primary, and demotes the old primary to active. Never an
    /// older one: kekd would report a key_id the apiserver has already moved away from.
    @discardableResult
    public mutating func promote(version: UInt32) throws(KMSError) -> (old: KeyVersion, new: KeyVersion) {
        guard let newIndex = versions.firstIndex(where: { $0.version == version }) else {
            throw KMSError(.failedPrecondition, "key version \(version) is not in the key file")
        }
        guard let oldIndex = versions.firstIndex(where: { $0.state == .primary }) else {
            throw KMSError(.failedPrecondition, "key file has no primary version")
        }
        guard newIndex != oldIndex else { throw KMSError(.failedPrecondition, "key version \(version) is already the primary") }
        guard versions[newIndex].state == .active else {
            throw KMSError(.failedPrecondition, "refusing to promote key version \(version): it is retired")
        }
        guard version > versions[oldIndex].version else {
            throw KMSError(.failedPrecondition, "refusing to promote key version \(version): it is older than the primary "
                           + "(version \(versions[oldIndex].version)); rotate to a new version instead")
        }
        versions[oldIndex].state = .active
        versions[newIndex].state = .primary
        return (versions[oldIndex], versions[newIndex])
    }

    /// Retires a version. Refuses the primary; returns false when it was already retired.
    @discardableResult
    public mutating func retire(version: UInt32) throws(KMSError) -> Bool {
        guard let index = versions.firstIndex(where: { $0.version == version }) else {
            throw KMSError(.failedPrecondition, "key version \(version) is not in the key file")
        }
        switch versions[index].state {
        case .primary:
            throw KMSError(.failedPrecondition, "refusing to retire key version \(version): it is the primary (rotate first)")
        case .retired:
            return false
        case .active:
            versions[index].state = .retired
            return true
        }
    }

    /// Drops retired versions and returns them.
    public mutating func prune() -> [KeyVersion] {
        let dropped = versions.filter { $0.state == .retired }
        versions.removeAll { $0.state == .retired }
        return dropped
    }

    // MARK: Validation

    public static let maxVersions = 10_000

    /// The rules every loaded or written file obeys.
    public func validate() throws(KMSError) {
        guard fileID.count == Self.fileIDSize else { throw KMSError(.failedPrecondition, "key file id must be \(Self.fileIDSize) bytes") }
        guard auditSecret.count == 32 else { throw KMSError(.failedPrecondition, "key file audit_secret must be 32 bytes") }
        guard !versions.isEmpty else { throw KMSError(.failedPrecondition, "key file has no key versions") }
        guard versions.count <= Self.maxVersions else { throw KMSError(.failedPrecondition, "key file has more than \(Self.maxVersions) versions") }
        var seen = Set<UInt32>()
        for v in versions {
            guard v.version >= 1 else { throw KMSError(.failedPrecondition, "key version numbers start at 1") }
            guard seen.insert(v.version).inserted else { throw KMSError(.failedPrecondition, "key version \(v.version) appears twice") }
            guard v.key.count == AES256GCM.keySize else {
                throw KMSError(.failedPrecondition, "key version \(v.version) has a \(v.key.count)-byte key, expected \(AES256GCM.keySize)")
            }
            // Only RFC 3339 characters: the parser tolerates trailing junk, and `serialized()` writes the value
            // unescaped, so anything else could turn into a file whose checksum no longer matches (found by fuzzing).
            guard v.created.utf8.count <= 40,
                  v.created.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x3A) || $0 == 0x54 || $0 == 0x5A || $0 == 0x2E || $0 == 0x2B || $0 == 0x2D }),
                  Self.parseRFC3339(v.created) != nil else {
                throw KMSError(.failedPrecondition, "key version \(v.version) has an invalid creation time")
            }
        }
        let primaries = versions.filter { $0.state == .primary }.count
        guard primaries == 1 else {
            throw KMSError(.failedPrecondition, "key file must have exactly one primary version, it has \(primaries)")
        }
    }

    // MARK: Encoding

    /// What the checksum covers: every field, in a fixed order, with the decoded keys re-encoded, so JSON whitespace
    /// and key order do not matter but every value does.
    func canonicalContent() -> [UInt8] {
        var s = "\(Self.kind)\nformat_version=\(Self.currentFormatVersion)\nfile_id=\(hexString(fileID))\n"
        s += "audit_secret=\(Data(auditSecret).base64EncodedString())\n"
        for v in versions.sorted(by: { $0.version < $1.version }) {
            s += "version=\(v.version)\tstate=\(v.state.rawValue)\tcreated=\(v.created)\tkey=\(Data(v.key).base64EncodedString())\n"
        }
        return Array(s.utf8)
    }

    func checksum() -> String { "sha256:" + hexString(SHA256.hash(canonicalContent())) }

    /// The JSON file content. Every value is hex, base64, a number, a state name or an RFC 3339 time, so no escaping
    /// is needed.
    public func serialized() -> [UInt8] {
        var s = "{\n  \"kind\": \"\(Self.kind)\",\n  \"format_version\": \(Self.currentFormatVersion),\n"
        s += "  \"file_id\": \"\(hexString(fileID))\",\n"
        s += "  \"audit_secret\": \"\(Data(auditSecret).base64EncodedString())\",\n  \"versions\": [\n"
        let sorted = versions.sorted { $0.version < $1.version }
        for (i, v) in sorted.enumerated() {
            s += "    {\"version\": \(v.version), \"state\": \"\(v.state.rawValue)\", \"created\": \"\(v.created)\", "
            s += "\"key\": \"\(Data(v.key).base64EncodedString())\"}" + (i == sorted.count - 1 ? "\n" : ",\n")
        }
        s += "  ],\n  \"checksum\": \"\(checksum())\"\n}\n"
        return Array(s.utf8)
    }

    /// Parses either format. `legacyCreated` is the creation time given to a first-format key (the file's mtime).
    public static func parse(_ bytes: [UInt8], legacyCreated: Date = Date(timeIntervalSince1970: 0)) throws(KMSError) -> KeyFile {
        if var legacyKey = legacyKey(bytes) {
            defer { wipe(&legacyKey) }
            guard !isPrintableText(legacyKey) else {
                throw KMSError(.failedPrecondition, "the key file holds \(bytes.count == AES256GCM.keySize ? "" : "base64 of ")32 bytes of printable "
                               + "text (a passphrase?), not a random key; create a key file with `kekctl init`")
            }
            return try fromLegacy(key: legacyKey, created: legacyCreated)
        }
        guard bytes.first(where: { !isJSONSpace($0) }) == UInt8(ascii: "{") else {
            throw KMSError(.failedPrecondition, "not a kekd key file (expected JSON, or a 32-byte key in the first format; got \(bytes.count) bytes)")
        }
        let stored = try StoredFile(bytes)
        guard stored.kind == kind else { throw KMSError(.failedPrecondition, "key file kind is \"\(stored.kind.prefix(40))\", expected \"\(kind)\"") }
        guard stored.format_version == currentFormatVersion else {
            throw KMSError(.failedPrecondition, "key file format_version \(stored.format_version) is not supported (this build reads \(currentFormatVersion))")
        }
        guard let fileID = decodeHex(stored.file_id), fileID.count == fileIDSize else {
            throw KMSError(.failedPrecondition, "key file is corrupt: file_id is not \(fileIDSize * 2) hex digits")
        }
        guard let auditSecret = Data(base64Encoded: stored.audit_secret).map({ [UInt8]($0) }) else {
            throw KMSError(.failedPrecondition, "key file is corrupt: audit_secret is not base64")
        }
        var versions: [KeyVersion] = []
        for v in stored.versions {
            guard let state = KeyState(rawValue: v.state) else {
                throw KMSError(.failedPrecondition, "key file is corrupt: key version \(v.version) has unknown state \"\(v.state.prefix(20))\"")
            }
            guard let key = Data(base64Encoded: v.key).map({ [UInt8]($0) }) else {
                throw KMSError(.failedPrecondition, "key file is corrupt: key version \(v.version) key is not base64")
            }
            versions.append(KeyVersion(version: v.version, state: state, created: v.created, key: key))
        }
        versions.sort { $0.version < $1.version }
        let file = KeyFile(fileID: fileID, auditSecret: auditSecret, versions: versions)
        guard constantTimeEqual(Array(file.checksum().utf8), Array(stored.checksum.utf8)) else {
            throw KMSError(.failedPrecondition, "key file checksum mismatch: the file is corrupt or was edited by hand")
        }
        try file.validate()
        return file
    }

    /// The first format's key, if `bytes` is one: 32 raw bytes, or 44 base64 characters and an optional newline.
    static func legacyKey(_ bytes: [UInt8]) -> [UInt8]? {
        if bytes.count == AES256GCM.keySize { return bytes }
        var text = bytes
        if text.last == UInt8(ascii: "\n") { text.removeLast() }
        if text.last == UInt8(ascii: "\r") { text.removeLast() }
        guard text.count == 44, let key = Data(base64Encoded: Data(text)), key.count == AES256GCM.keySize else { return nil }
        return [UInt8](key)
    }

    static func fromLegacy(key: [UInt8], created: Date) throws(KMSError) -> KeyFile {
        let fileID: [UInt8], auditSecret: [UInt8]
        do {
            fileID = try PBKDF2SHA256.derive(password: key, salt: legacyFileIDLabel, iterations: legacyFileIDIterations,
                                             length: fileIDSize)
            auditSecret = try HKDFSHA256.derive(inputKey: key, salt: [], info: legacyAuditSecretLabel, length: 32)
        } catch {
            throw KMSError(.internalError, "deriving the legacy file id and audit secret: \(error)")
        }
        var file = KeyFile(fileID: fileID, auditSecret: auditSecret,
                           versions: [KeyVersion(version: 1, state: .primary, created: rfc3339(created), key: key)])
        file.isLegacyFormat = true
        return file
    }

    /// The key_id the first release gave a first-format key (file id: one SHA-256 of the key), accepted by Decrypt
    /// for version 1 so ciphertexts stored under it still decrypt.
    static func firstReleaseLegacyKeyID(key: [UInt8]) -> String {
        keyID(fileID: Array(SHA256.hash(firstReleaseLegacyFileIDLabel + key).prefix(fileIDSize)), version: 1)
    }

    /// The audit chain key the first release derived for a file that began as a first-format key (its file id was
    /// one SHA-256 of version 1's key), so `kekctl audit verify` still checks logs written before the upgrade. For
    /// any other file it is just a key that verifies nothing. nil once version 1 is pruned.
    public func firstReleaseLegacyAuditHMACKey() throws(KMSError) -> [UInt8]? {
        guard let first = versions.first(where: { $0.version == 1 }) else { return nil }
        var before = self
        before.fileID = Array(SHA256.hash(Self.firstReleaseLegacyFileIDLabel + first.key).prefix(Self.fileIDSize))
        return try before.auditHMACKey()
    }

    public static func == (a: KeyFile, b: KeyFile) -> Bool {
        a.fileID == b.fileID && constantTimeEqual(a.auditSecret, b.auditSecret) && a.versions.count == b.versions.count
            && zip(a.versions, b.versions).allSatisfy {
                $0.version == $1.version && $0.state == $1.state && $0.created == $1.created && constantTimeEqual($0.key, $1.key)
            }
    }

    // MARK: Helpers

    public static func rfc3339(_ date: Date) -> String { date.formatted(Date.ISO8601FormatStyle()) }

    public static func parseRFC3339(_ text: String) -> Date? {
        if let d = try? Date(text, strategy: Date.ISO8601FormatStyle()) { return d }
        return try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    private static func isJSONSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09 }

    private static func decodeHex(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// The key file's JSON, field by field: unknown fields are ignored, a missing field or a wrong type is an error
/// naming the field (never its value).
private struct StoredFile {
    var kind: String
    var format_version: Int
    var file_id: String
    var audit_secret: String
    var versions: [StoredVersion]
    var checksum: String

    struct StoredVersion {
        var version: UInt32
        var state: String
        var created: String
        var key: String
    }

    init(_ bytes: [UInt8]) throws(KMSError) {
        guard let json = JSONValue.parse(bytes), let top = json.object else { throw Self.corrupt("syntax error") }
        kind = try Self.string(top, "kind")
        format_version = try Self.integer(top, "format_version", max: Int(Int32.max))
        file_id = try Self.string(top, "file_id")
        audit_secret = try Self.string(top, "audit_secret")
        checksum = try Self.string(top, "checksum")
        guard let list = top["versions"]?.array else { throw Self.corrupt("missing field or wrong type: versions") }
        versions = []
        for (i, item) in list.enumerated() {
            guard let v = item.object else { throw Self.corrupt("wrong type at versions.\(i)") }
            versions.append(StoredVersion(version: UInt32(try Self.integer(v, "version", max: Int(UInt32.max), at: "versions.\(i)")),
                                          state: try Self.string(v, "state", at: "versions.\(i)"),
                                          created: try Self.string(v, "created", at: "versions.\(i)"),
                                          key: try Self.string(v, "key", at: "versions.\(i)")))
        }
    }

    private static func corrupt(_ what: String) -> KMSError {
        KMSError(.failedPrecondition, "key file is corrupt: not valid kekd key file JSON (\(what))")
    }

    private static func string(_ o: [String: JSONValue], _ name: String, at path: String = "") throws(KMSError) -> String {
        guard let s = o[name]?.string else { throw corrupt("missing field or wrong type: \(path.isEmpty ? "" : path + ".")\(name)") }
        return s
    }

    private static func integer(_ o: [String: JSONValue], _ name: String, max: Int, at path: String = "") throws(KMSError) -> Int {
        guard case .number(let d)? = o[name], d == d.rounded(), d >= 0, d <= Double(max) else {
            throw corrupt("missing field or wrong type: \(path.isEmpty ? "" : path + ".")\(name)")
        }
        return Int(d)
    }
}
