// `--backend pkcs11`: the Vault backend's hierarchy over an HSM. A random local KEK (AES-256) is wrapped once by the
// token's key (CKM_AES_GCM on the token, key never leaves it) and kept in memory; Encrypt seals under it locally and
// ships the wrapped local KEK in an annotation, so Encrypt and Status never touch the HSM. Decrypt asks the token
// only on a cache miss (one round per wrapped KEK). A background loop rescans the token every poll interval,
// follows a new key version, and reconnects after the token went away or the PIN file changed.
import Crypto
import Glibc
import KMS
import Locking
import Logging
import Synchronization

public final class PKCS11KeyBackend: KeyBackend {
    /// Annotation carrying the HSM-wrapped local KEK.
    public static let localKEKAnnotation = "pkcs11-local-kek.kekd.io"
    static let envelopeDomain = "kekd-pkcs11-envelope-v1"
    /// A local KEK is replaced after this many encryptions (random 96-bit nonces: far below 2^32).
    static let renewalEncryptions = 1 << 30
    static let hardEncryptionLimit = 1 << 31

    /// The local KEK Encrypt uses, with the key_id Status reports for it.
    final class ActiveKEK: Sendable {
        let key: SymmetricKey
        let wrapped: String
        let keyID: String
        let version: Int
        let encryptions = Atomic<Int>(0)
        init(key: SymmetricKey, wrapped: String, keyID: String, version: Int) {
            self.key = key; self.wrapped = wrapped; self.keyID = keyID; self.version = version
        }
    }

    struct State {
        var versions: [KeyFamilyVersion] = []
        var keyIDs: [Int: String] = [:]
        var active: ActiveKEK?
        /// Why the token cannot be used now (CK_RV name or short reason, and the one-line message); nil when fine.
        var problem: (name: String, message: String)?
        var serial = ""
    }

    public let configuration: PKCS11Configuration
    public let token: PKCS11Token
    private let state = LockedValue(State())
    private let cache: UnwrappedKEKCache
    /// Wrapped local KEKs issued or unwrapped lately (wrapped form only), warmed at start.
    let record: IssuedKEKStore?
    private let flights = SingleFlight()
    private let onCache: (@Sendable (Bool) -> Void)?
    private let log: Logger
    private let stopped = Atomic<Bool>(false)
    private let forceReconnect = Atomic<Bool>(false)
    /// Serialises rescans (background loop, a Decrypt meeting an unknown version).
    private let refreshLock = Lock()
    private let lastUnscheduledRescan = LockedValue<Double>(-.infinity)
    private let wake = Condition()
    private let loopDone = Condition()
    private let loopRunning = Atomic<Bool>(false)

    /// Connects, logs in, scans the key family and wraps the first local KEK; throws a one-line reason when any of
    /// that fails (kekd exits with its HSM code). Then the background loop keeps it current.
    public init(configuration: PKCS11Configuration, onBackendCall: BackendCallHook? = nil,
                onCache: (@Sendable (Bool) -> Void)? = nil, log: Logger, startBackground: Bool = true) throws(KMSError) {
        self.configuration = configuration
        self.onCache = onCache
        self.log = log.with(["backend": "pkcs11"])
        cache = UnwrappedKEKCache(capacity: configuration.cacheSize)
        let log = self.log
        record = configuration.issuedKEKRecordPath.map { path in
            IssuedKEKStore(path: path, owner: Self.recordOwner(configuration), log: log)
        }
        do {
            token = try PKCS11Token(configuration: configuration, onCall: onBackendCall)
            try refresh(reconnect: true)
        } catch {
            throw KMSError(.unavailable, "pkcs11: \(error.message)")
        }
        if startBackground {
            loopRunning.store(true, ordering: .relaxed)
            startThread(name: "kekd-pkcs11") { [self] in
                self.warmFromRecord()
                self.maintenanceLoop()
            }
        }
    }

    public var name: String { "pkcs11" }

    /// Encrypt never touches the token; a Decrypt does only when its local KEK is not cached.
    public func wouldBlock(_ call: BackendCall) -> Bool {
        switch call {
        case .encrypt: return false
        case .decrypt(_, let annotations):
            guard let annotation = annotations[Self.localKEKAnnotation] else { return false }
            return !cache.contains(String(decoding: annotation, as: UTF8.self))
        }
    }

    // MARK: Status / Encrypt / Decrypt

    /// Cached state only. An unreachable token does not fail Status: Encrypt keeps working with the cached local KEK.
    public func status() -> BackendStatus {
        state.withLock { s in
            guard let active = s.active else { return BackendStatus(healthy: false, keyID: "", detail: "no local KEK (PKCS#11 token not reached)") }
            let detail = s.problem.map { "ok (encrypting with the cached local KEK; PKCS#11 problem: \($0.message))" } ?? "ok"
            return BackendStatus(healthy: true, keyID: active.keyID, detail: detail)
        }
    }

    /// For /readyz and metrics: nil when the token answers, else (CK_RV name or reason, message).
    public var tokenProblem: (name: String, message: String)? { state.withLock { $0.problem } }

    public func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        guard let active = state.withLock({ $0.active }) else { throw KMSError(.unavailable, "no local KEK (PKCS#11 token not reached)") }
        let used = active.encryptions.add(1, ordering: .relaxed).newValue
        if used >= Self.renewalEncryptions { wakeMaintenance() }
        guard used <= Self.hardEncryptionLimit else { throw KMSError(.unavailable, "local KEK exhausted; waiting for the token to wrap a new one") }
        let annotations = [Self.localKEKAnnotation: Array(active.wrapped.utf8)]
        let ciphertext = try LocalKEKEnvelope.seal(plaintext, key: active.key, domain: Self.envelopeDomain, keyID: active.keyID,
                                                   annotations: annotations)
        return EncryptResult(ciphertext: ciphertext, keyID: active.keyID, annotations: annotations)
    }

    public func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                        context: CallContext) throws(KMSError) -> [UInt8] {
        guard LocalKEKEnvelope.isWellFormed(ciphertext) else {
            throw KMSError(.invalidArgument, "ciphertext is not a kekd PKCS#11 envelope")
        }
        guard let annotation = annotations[Self.localKEKAnnotation] else {
            throw KMSError(.invalidArgument, "annotation \(Self.localKEKAnnotation) missing")
        }
        // A cached local KEK comes with its annotation already parsed; the checks below run on every call all the same.
        let text = String(decoding: annotation, as: UTF8.self)
        let hit = cache.lookup(text)
        guard let wrapped = hit?.parsed ?? WrappedLocalKEK(text: annotation), let keyIDVersion = KeyFamily.version(ofKeyID: keyID),
              keyIDVersion == wrapped.version else {
            throw KMSError(.invalidArgument, "key_id or annotation \(Self.localKEKAnnotation) was not issued by kekd's PKCS#11 backend")
        }
        func lookup() -> (KeyFamilyVersion?, String?, (name: String, message: String)?) {
            state.withLock { s in (s.versions.first { $0.version == wrapped.version }, s.keyIDs[wrapped.version], s.problem) }
        }
        var (found, expectedKeyID, problem) = lookup()
        if found.map({ !constantTimeEqual($0.id, wrapped.keyObjectID) }) ?? true, problem == nil, rescanSoon() {
            // A version another node's kekctl made since our last rescan: look now rather than a poll interval later.
            (found, expectedKeyID, problem) = lookup()
        }
        let family = configuration.keyLabel
        guard let found, constantTimeEqual(found.id, wrapped.keyObjectID) else {
            throw KMSError(.failedPrecondition, "key version \(wrapped.version) of \(family) that wrapped this local KEK is not on the token")
        }
        // Checked before the cache: retiring a version must stop kekd at once, cached local KEKs included.
        guard !found.retired else { throw KMSError(.failedPrecondition, "key version \(wrapped.version) of \(family) is retired") }
        guard expectedKeyID == keyID else { throw KMSError(.invalidArgument, "key_id was not issued by kekd for this key version") }
        let key: SymmetricKey
        if let hit {
            onCache?(true)
            record?.touch(wrapped: text)
            key = hit.key
        } else {
            onCache?(false)
            // Fail fast while the token is away: the background loop reconnects, Decrypts must not queue on it.
            if let problem { throw KMSError(.unavailable, "PKCS#11 token unavailable: \(problem.message)") }
            key = try unwrapShared(text, wrapped, handle: found.handle, keyID: keyID, context: context, noteInRecord: true).get()
        }
        return try LocalKEKEnvelope.open(ciphertext, key: key, domain: Self.envelopeDomain, keyID: keyID, annotations: annotations)
    }

    /// One token unwrap per wrapped local KEK however many callers (Decrypts, the warm-up) miss it at once; the result
    /// is cached, and noted in the record when asked (the warm-up's entries are in it already). A caller waiting for
    /// another's unwrap leaves when `context` says so.
    private func unwrapShared(_ text: String, _ wrapped: WrappedLocalKEK, handle: UInt, keyID: String,
                              context: CallContext, noteInRecord: Bool) -> Result<SymmetricKey, KMSError> {
        flights.run(text, context: context, timeout: configuration.requestTimeout) {
            if let cached = cache.get(text) { return .success(cached) }
            return unwrap(wrapped, handle: handle, keyID: keyID).map { key in
                cache.put(text, key, parsed: wrapped)
                if noteInRecord { record?.note(wrapped: text, keyVersion: wrapped.version) }
                return key
            }
        }
    }

    private func unwrap(_ wrapped: WrappedLocalKEK, handle: UInt, keyID: String) -> Result<SymmetricKey, KMSError> {
        do {
            var plain = try token.withSession(.unwrap) { (session: UInt) throws(PKCS11Error) -> [UInt8] in
                try token.module.decryptGCM(session, key: handle, iv: wrapped.iv, aad: Self.wrapAAD(keyID: keyID), sealed: wrapped.sealed)
            }
            defer { wipe(&plain) }
            guard let key = try? SymmetricKey(bytes: plain) else { return .failure(KMSError(.invalidArgument, "wrapped local KEK has the wrong size")) }
            return .success(key)
        } catch {
            // A refused wrapped key is the caller's bad input; anything else means the token is not usable now.
            if error.badInput { return .failure(KMSError(.invalidArgument, "the token refused the wrapped local KEK (\(error.name ?? "error"))")) }
            noteProblem(error)
            return .failure(KMSError(.unavailable, "PKCS#11 token unavailable: \(error.message)"))
        }
    }

    /// Binds the local KEK to the key_id it is issued under.
    static func wrapAAD(keyID: String) -> [UInt8] { Array("kekd-pkcs11-local-kek-v1".utf8) + [0] + Array(keyID.utf8) }

    // MARK: Token upkeep

    /// Rescans the key family (reconnecting first when asked, after a problem, or when the PIN file changed) and
    /// wraps a new local KEK when the encrypting version changed or the current one is worn.
    func refresh(reconnect: Bool) throws(PKCS11Error) {
        try refreshLock.withLock { () throws(PKCS11Error) in try refreshLocked(reconnect: reconnect) }
    }

    /// A rescan now, at most once a second (a stream of foreign key_ids must not keep the token busy); whether one ran.
    private func rescanSoon() -> Bool {
        let now = monotonicSeconds()
        guard lastUnscheduledRescan.withLock({ last in
            guard now - last >= 1 else { return false }
            last = now
            return true
        }) else { return false }
        do { try refresh(reconnect: false) } catch { noteProblem(error) }
        return true
    }

    private func refreshLocked(reconnect: Bool) throws(PKCS11Error) {
        if reconnect || state.withLock({ $0.problem != nil }) || token.pinFileChanged {
            try token.connect()
        }
        let serial = token.info?.serial ?? ""
        let family = configuration.keyLabel
        let versions = try token.withSession(.scan) { (session: UInt) throws(PKCS11Error) -> [KeyFamilyVersion] in
            try KeyFamily.versions(of: token.module.findSecretKeys(session), family: family)
        }
        guard let primary = KeyFamily.primary(versions) else {
            throw PKCS11Error(rv: nil, "no usable key \(family)-vN on token \(token.info?.label ?? "?") (run kekctl pkcs11 init)")
        }
        let keyIDs = versions.reduce(into: [Int: String]()) { $0[$1.version] = KeyFamily.keyID(tokenSerial: serial, family: family, version: $1.version, id: $1.id) }
        let current = state.withLock { $0.active }
        let primaryKeyID = keyIDs[primary.version] ?? ""
        var fresh: ActiveKEK?
        if current?.keyID != primaryKeyID || (current?.encryptions.load(ordering: .relaxed) ?? 0) >= Self.renewalEncryptions {
            fresh = try wrapNewKEK(primary: primary, keyID: primaryKeyID)
        }
        let (hadProblem, previous) = state.withLock { s -> (Bool, String?) in
            defer {
                s.versions = versions; s.keyIDs = keyIDs; s.serial = serial; s.problem = nil
                if let fresh { s.active = fresh }
            }
            return (s.problem != nil, s.active?.keyID)
        }
        if hadProblem { log.info("PKCS#11 token usable again") }
        if let fresh, previous != fresh.keyID {
            log.info("new local KEK under \(KeyFamily.label(family: family, version: fresh.version))", ["key_id": fresh.keyID])
        }
    }

    private func wrapNewKEK(primary: KeyFamilyVersion, keyID: String) throws(PKCS11Error) -> ActiveKEK {
        let key: SymmetricKey, iv: [UInt8]
        do { key = try SymmetricKey.random(); iv = try SecureRandom.bytes(WrappedLocalKEK.ivSize) } catch {
            throw PKCS11Error(rv: nil, "cannot generate a local KEK: \(error.description)")
        }
        let sealed = try token.withSession(.wrap) { (session: UInt) throws(PKCS11Error) -> [UInt8] in
            try token.module.encryptGCM(session, key: primary.handle, iv: iv, aad: Self.wrapAAD(keyID: keyID), plaintext: key.bytes)
        }
        let parsed = WrappedLocalKEK(version: primary.version, keyObjectID: primary.id, iv: iv, sealed: sealed)
        let wrapped = parsed.text
        cache.put(wrapped, key, parsed: parsed)
        record?.note(wrapped: wrapped, keyVersion: primary.version)
        return ActiveKEK(key: key, wrapped: wrapped, keyID: keyID, version: primary.version)
    }

    private func noteProblem(_ error: PKCS11Error) {
        let first = state.withLock { s -> Bool in
            defer { s.problem = (error.name ?? "unavailable", error.message) }
            return s.problem == nil
        }
        if first {
            log.warn("PKCS#11 token unusable; cached local KEKs keep working, uncached Decrypts fail "
                     + "with UNAVAILABLE until it is back: \(error.message)")
        }
    }

    private func maintenanceLoop() {
        while !stopped.load(ordering: .relaxed) {
            // A token that is away is retried every second or two, a healthy one rescanned every poll interval.
            let down = state.withLock { $0.problem != nil }
            wake.lock()
            if !stopped.load(ordering: .relaxed) {
                _ = wake.wait(seconds: down ? min(configuration.pollInterval, 1) : configuration.pollInterval)
            }
            wake.unlock()
            if stopped.load(ordering: .relaxed) { break }
            do { try refresh(reconnect: forceReconnect.exchange(false, ordering: .relaxed)) } catch { noteProblem(error) }
            record?.save(now: monotonicSeconds())
        }
        record?.save(now: monotonicSeconds(), force: true)
        loopDone.lock()
        loopRunning.store(false, ordering: .relaxed)
        loopDone.broadcast()
        loopDone.unlock()
    }

    private func wakeMaintenance() {
        wake.lock(); wake.signal(); wake.unlock()
    }

    /// SIGHUP: reconnect (re-reading the PIN file) and rescan now.
    public func reload() {
        forceReconnect.store(true, ordering: .relaxed)
        wakeMaintenance()
    }

    public func close() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        wakeMaintenance()
        loopDone.lock()
        let end = monotonicSeconds() + 5
        while loopRunning.load(ordering: .relaxed) && monotonicSeconds() < end { _ = loopDone.wait(seconds: 0.1) }
        loopDone.unlock()
        token.disconnect()
    }

    // MARK: Record of wrapped local KEKs

    /// Who a record belongs to: the key family on its token, however the token is found.
    static func recordOwner(_ configuration: PKCS11Configuration) -> String {
        let token: String
        switch configuration.token {
        case .label(let label): token = "label\u{0}" + label
        case .slot(let slot): token = "slot\u{0}" + String(slot)
        }
        let input = Array("kekd-pkcs11-record-v1\u{0}\(token)\u{0}\(configuration.keyLabel)".utf8)
        return "pkcs11-" + hexString(SHA256.hash(input).prefix(16))
    }

    /// At start, on the backend's own thread (serving does not wait for it): unwraps the most recently used local
    /// KEKs of the record, one token call each (PKCS#11 has no batch), so the apiserver's decrypts after a reboot find
    /// them cached. A Decrypt missing one of them meanwhile shares its unwrap (single flight). Entries the token
    /// refuses or whose key version is gone or retired are dropped from the record.
    func warmFromRecord() {
        guard let record else { return }
        record.load()
        let recent = record.mostRecent(min(IssuedKEKStore.defaultCapacity, configuration.cacheSize))
        guard !recent.isEmpty else { return }
        var warmed = 0
        var dropped: [String] = []
        for entry in recent where !stopped.load(ordering: .relaxed) {
            if cache.get(entry.wrapped) != nil { warmed += 1; continue }
            guard let wrapped = WrappedLocalKEK(text: Array(entry.wrapped.utf8)) else { dropped.append(entry.wrapped); continue }
            let (found, keyID, problem) = state.withLock { s in
                (s.versions.first { $0.version == wrapped.version }, s.keyIDs[wrapped.version], s.problem)
            }
            if problem != nil { break }
            guard let found, !found.retired, constantTimeEqual(found.id, wrapped.keyObjectID), let keyID else {
                dropped.append(entry.wrapped); continue
            }
            let result = try? unwrapShared(entry.wrapped, wrapped, handle: found.handle, keyID: keyID, context: .unbounded,
                                      noteInRecord: false).get()
            if result != nil { warmed += 1 } else if state.withLock({ $0.problem == nil }) { dropped.append(entry.wrapped) }
        }
        record.remove(dropped)
        log.info("warmed \(warmed) of \(recent.count) recorded local KEKs from the token"
                 + (dropped.isEmpty ? "" : "; \(dropped.count) no longer usable and dropped from the record"))
    }

    /// Counts for tests.
    var cachedKEKs: Int { cache.count }
}
