// The local key backend: KEKs from a key file, followed live.
//
// Every call works on one immutable `KeySnapshot`, swapped whole under a lock, so the key_id Encrypt returns is the
// key_id Status reports for that snapshot, and a call never sees half a reload. A changed file is validated fully
// (checksum, state rules, and a sane succession from the current keys) before it takes effect; a broken one never
// does, kekd keeps its keys and says why once on stderr.
import Crypto
import Dispatch
import FoundationEssentials
import Glibc
import Locking
import Logging
import Synchronization

/// The keys one call works with.
final class KeySnapshot: Sendable {
    /// A class: a call takes its version's entry out of the dictionary, one retain instead of one per field.
    final class Entry: Sendable {
        let version: UInt32
        let state: KeyState
        let keyID: String
        let key: SymmetricKey
        /// Version 1 only: the key_id the first release gave a first-format key (see `KeyFile`); still accepted.
        let firstReleaseKeyID: String?
        /// The AAD of every ciphertext Encrypt makes under this version (its key_id and `FileKeyBackend.annotations`):
        /// built once here, not per call.
        let ownAAD: [UInt8]

        init(version: UInt32, state: KeyState, keyID: String, key: SymmetricKey, firstReleaseKeyID: String?, ownAAD: [UInt8]) {
            self.version = version
            self.state = state
            self.keyID = keyID
            self.key = key
            self.firstReleaseKeyID = firstReleaseKeyID
            self.ownAAD = ownAAD
        }

        /// Whether a Decrypt's key_id and annotations are the ones Encrypt returns for this version (so `ownAAD` is
        /// its AAD). Checked without hashing: the usual single annotation is compared directly.
        func isOwn(keyID: String, annotations: [String: [UInt8]]) -> Bool {
            guard keyID == self.keyID, annotations.count == 1, let only = annotations.first else { return false }
            return only.value == FileKeyBackend.annotationValue && only.key == FileKeyBackend.annotationKey
        }
    }
    let fileID: [UInt8]
    let auditSecret: [UInt8]
    let primary: Entry
    let entries: [UInt32: Entry]
    let isLegacyFormat: Bool

    init(_ file: KeyFile) throws(KMSError) {
        try file.validate()
        var entries: [UInt32: Entry] = [:]
        var primary: Entry?
        for v in file.versions {
            let key: SymmetricKey
            do { key = try SymmetricKey(bytes: v.key) } catch { throw KMSError(.failedPrecondition, "key version \(v.version): \(error)") }
            let keyID = file.keyID(forVersion: v.version)
            let entry = Entry(version: v.version, state: v.state, keyID: keyID, key: key,
                              firstReleaseKeyID: v.version == 1 ? KeyFile.firstReleaseLegacyKeyID(key: v.key) : nil,
                              ownAAD: try Envelope.additionalData(keyVersion: v.version, keyID: keyID,
                                                                  annotations: FileKeyBackend.annotations))
            entries[v.version] = entry
            if v.state == .primary { primary = entry }
        }
        guard let primary else { throw KMSError(.failedPrecondition, "key file has no primary version") }
        self.fileID = file.fileID
        self.auditSecret = file.auditSecret
        self.primary = primary
        self.entries = entries
        self.isLegacyFormat = file.isLegacyFormat
    }

    /// Why `next` may not replace `self`, or nil. A replacement keeps the file id and audit secret, never moves the
    /// primary back to an older version (Status would report a key_id it already moved away from), and never
    /// changes the bytes of a version both share (one key_id would name two keys).
    func successionProblem(to next: KeySnapshot) -> String? {
        if next.fileID != fileID {
            return "the key file now has a different file id (recreated or replaced by another key file); restart kekd to switch key files deliberately"
        }
        if !constantTimeEqual(next.auditSecret, auditSecret) { return "the key file's audit secret changed" }
        if next.primary.version < primary.version {
            return "the primary would move back from key version \(primary.version) to \(next.primary.version)"
        }
        for (version, entry) in next.entries {
            if let old = entries[version], !constantTimeEqual(old.key.bytes, entry.key.bytes) {
                return "key version \(version) has different key bytes than before"
            }
        }
        return nil
    }

    func sameStates(as other: KeySnapshot) -> Bool {
        entries.count == other.entries.count && entries.allSatisfy { other.entries[$0.key]?.state == $0.value.state }
    }
}

public final class FileKeyBackend: KeyBackend {
    /// The one annotation Encrypt returns: the envelope format, under the project's domain. Bound as AAD.
    public static let annotationKey = "local-kek.kekd.io"
    public static let annotationValue: [UInt8] = Array("aes-256-gcm/\(Envelope.formatVersion)".utf8)
    /// Every ciphertext's annotations: built once, not per Encrypt.
    static let annotations = [annotationKey: annotationValue]

    public let name = "file"
    /// Every call is a local AES-GCM: it never waits.
    public func wouldBlock(_ call: BackendCall) -> Bool { false }
    public let keyFilePath: String

    private struct WatchState {
        var fingerprint: FileFingerprint?
        var lastProblem: String?
    }
    private let current: LockedValue<KeySnapshot>
    private let lastRejection = LockedValue<String?>(nil)
    /// What `status()` answers, rebuilt when the keys or the last rejection change: Status is polled and must not
    /// format its detail on every call.
    private let currentStatus: LockedValue<BackendStatus>
    private let rejectedReloads = Atomic<Int>(0)
    /// Serialises reloads (poller and SIGHUP) and holds what the poller last saw; never taken by Status.
    private let watch: LockedValue<WatchState>
    private let auditKey: [UInt8]
    private let log: Logger
    private let stopSignal = DispatchSemaphore(value: 0)
    private let closed = Atomic<Bool>(false)

    /// Loads and validates the key file, failing with a clear message when it is missing, unreadable, accessible by
    /// group/others, corrupt or invalid. Then polls it every `pollInterval` seconds (nil: only on `reload()`).
    public init(keyFilePath: String, pollInterval: Double? = 1.0, log: Logger) throws(KMSError) {
        self.keyFilePath = keyFilePath
        self.log = log
        let loaded = try KeyFileStore.load(path: keyFilePath, owner: .processOrRoot)
        let snapshot = try KeySnapshot(loaded.file)
        auditKey = try loaded.file.auditHMACKey()
        current = LockedValue(snapshot)
        currentStatus = LockedValue(Self.status(of: snapshot, path: keyFilePath, rejection: nil))
        watch = LockedValue(WatchState(fingerprint: loaded.fingerprint, lastProblem: nil))
        if snapshot.isLegacyFormat {
            log.info("key file is in the first (single-key) format; `kekctl rotate` converts it",
                     ["path": keyFilePath, "key_id": snapshot.primary.keyID])
        }
        if let pollInterval, pollInterval > 0 { startPolling(every: pollInterval) }
    }

    deinit { stopSignal.signal() }

    // MARK: KeyBackend

    public func status() -> BackendStatus { currentStatus.withLock { $0 } }

    private static func status(of snapshot: KeySnapshot, path: String, rejection: String?) -> BackendStatus {
        var detail = "key file \(path): \(snapshot.entries.count) version(s), primary version \(snapshot.primary.version)"
        if let rejection { detail += "; last change rejected: \(rejection)" }
        return BackendStatus(healthy: true, keyID: snapshot.primary.keyID, detail: detail)
    }

    /// After a change of `current` or `lastRejection` (made under `watch`, so changes do not interleave).
    private func refreshStatus() {
        let next = Self.status(of: current.withLock { $0 }, path: keyFilePath, rejection: lastRejection.withLock { $0 })
        currentStatus.withLock { $0 = next }
    }

    public func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        let primary = current.withLock { $0 }.primary
        let ciphertext = try Envelope.seal(plaintext: plaintext, key: primary.key, keyVersion: primary.version, aad: primary.ownAAD)
        return EncryptResult(ciphertext: ciphertext, keyID: primary.keyID, annotations: Self.annotations)
    }

    /// The ciphertext names its key version; the key_id must be that version's key_id in this key file (else the
    /// ciphertext is foreign, tampered or mismatched: INVALID_ARGUMENT). A version of this file that is retired or
    /// no longer present is FAILED_PRECONDITION, naming the version.
    public func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                        context: CallContext) throws(KMSError) -> [UInt8] {
        let snapshot = current.withLock { $0 }
        let version = try Envelope.keyVersion(of: ciphertext)
        let known = snapshot.entries[version]
        // key_ids are derived, so a version no longer in the file is still recognised as ours.
        guard keyID == (known?.keyID ?? KeyFile.keyID(fileID: snapshot.fileID, version: version))
                || (known?.firstReleaseKeyID != nil && keyID == known?.firstReleaseKeyID) else {
            throw KMSError(.invalidArgument, "key_id does not match the ciphertext (foreign, tampered, or paired with another key_id)")
        }
        guard let entry = known else {
            if version > snapshot.primary.version {
                throw KMSError(.failedPrecondition, "key version \(version) (key_id \(keyID)) is newer than this key file: "
                               + "it was rotated elsewhere and this node has not got the new key file yet")
            }
            throw KMSError(.failedPrecondition, "key version \(version) (key_id \(keyID)) is no longer in the key file (pruned)")
        }
        guard entry.state != .retired else {
            throw KMSError(.failedPrecondition, "key version \(version) (key_id \(keyID)) is retired")
        }
        if entry.isOwn(keyID: keyID, annotations: annotations) {
            return try Envelope.open(ciphertext: ciphertext, key: entry.key, aad: entry.ownAAD)
        }
        return try Envelope.open(ciphertext: ciphertext, key: entry.key, keyID: keyID, annotations: annotations)
    }

    /// HKDF-SHA256(input key: the key file's audit secret, salt: its file id, info: "kekd audit-chain hmac key v1"),
    /// 32 bytes: stable across rotation and pruning (see `KeyFile.auditHMACKey`). kekd chains its audit log with it
    /// when the file backend encrypts and no --audit-hmac-key-file is given.
    public func auditHMACKey() -> [UInt8] { auditKey }

    /// For `/readyz` (check `key-file`) and metrics: whether the file on disk was last loaded successfully (false
    /// from a rejected reload until a good file is loaded; kekd keeps serving its previous keys meanwhile), and how
    /// many reloads were rejected since start.
    public var keyFileHealth: (valid: Bool, rejectedReloads: Int) {
        (lastRejection.withLock { $0 } == nil, rejectedReloads.load(ordering: .relaxed))
    }

    /// SIGHUP: re-read the file now, whether or not it looks changed; a rejection is always logged.
    public func reload() {
        watch.withLock { state in
            state.fingerprint = KeyFileStore.fingerprint(path: keyFilePath)
            state.lastProblem = nil
            loadAndSwitch(&state)
        }
    }

    public func close() {
        if closed.exchange(true, ordering: .acquiringAndReleasing) == false { stopSignal.signal() }
    }

    // MARK: Static helpers for kekd and kekctl

    /// Creates a new key file (one primary version, random file id, mode 0600, atomic); refuses to overwrite.
    public static func initializeKeyFile(path: String) throws(KMSError) {
        try KeyFileStore.create(path: path, file: KeyFile.generate())
    }

    /// The audit HMAC key `auditHMACKey()` returns for a backend on this key file, for `kekctl audit verify`.
    public static func auditHMACKey(keyFilePath: String) throws(KMSError) -> [UInt8] {
        try KeyFileStore.load(path: keyFilePath).file.auditHMACKey()
    }

    // MARK: Following the file

    private func startPolling(every interval: Double) {
        let signal = stopSignal
        startThread(name: "kekd-key-watch") { [weak self] in
            while signal.wait(timeout: .now() + interval) == .timedOut {
                guard let self else { return }
                self.checkForChange()
            }
        }
    }

    /// One poll: reload when what the path points at (inode, size, times) changed since the last look.
    func checkForChange() {
        watch.withLock { state in
            let seen = KeyFileStore.fingerprint(path: keyFilePath)
            guard seen != state.fingerprint else { return }
            state.fingerprint = seen
            loadAndSwitch(&state)
        }
    }

    private func loadAndSwitch(_ state: inout WatchState) {
        let next: KeySnapshot
        do {
            next = try KeySnapshot(KeyFileStore.load(path: keyFilePath, owner: .processOrRoot).file)
        } catch {
            reject(error.message, &state)
            return
        }
        let previous = current.withLock { $0 }
        if let problem = previous.successionProblem(to: next) {
            reject(problem, &state)
            return
        }
        state.lastProblem = nil
        lastRejection.withLock { $0 = nil }
        if next.primary.version == previous.primary.version && previous.sameStates(as: next) {
            refreshStatus()
            return
        }
        current.withLock { $0 = next }
        refreshStatus()
        log.info("key file reloaded", ["path": keyFilePath, "key_id": next.primary.keyID,
                                       "primary_version": String(next.primary.version), "versions": String(next.entries.count)])
    }

    private func reject(_ problem: String, _ state: inout WatchState) {
        lastRejection.withLock { $0 = problem }
        refreshStatus()
        rejectedReloads.add(1, ordering: .relaxed)
        guard state.lastProblem != problem else { return }
        state.lastProblem = problem
        log.warn("key file change not applied, keeping the current keys: \(problem)", ["path": keyFilePath])
    }
}
