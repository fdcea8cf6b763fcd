// The local-KEK hierarchy over Vault Transit. A random 256-bit local KEK is wrapped once by Transit (explicit
// key_version) and kept in memory; Encrypt seals the apiserver's DEK seed with it locally and ships the wrapped
// local KEK in an annotation, so Encrypt never calls Vault. Decrypt finds the local KEK in the cache or asks Vault
// (batched). A background loop renews the token, polls the key's latest version and renews the local KEK.
import Crypto
import Dispatch
import FoundationEssentials
import Glibc
import KMS
import Locking
import Logging
import Synchronization

/// The local KEK in use for Encrypt, with everything Status and Encrypt must agree on.
final class ActiveKEK: Sendable {
    let key: SymmetricKey
    let wrapped: String
    let keyID: String
    let vaultVersion: Int
    let vaultCreated: Int64
    let createdAt: Double
    let encryptions = Atomic<Int>(0)

    /// Why this local KEK may not encrypt any more (its age or use count reached the configured limit), or nil.
    func exhaustion(config: VaultConfiguration, now: Double) -> String? {
        if now - createdAt >= config.localKEKMaxAge { return "the local KEK reached --vault-local-kek-max-age" }
        if encryptions.load(ordering: .relaxed) >= VaultKeyring.encryptionLimit(config) {
            return "the local KEK reached --vault-local-kek-max-encryptions"
        }
        return nil
    }

    init(key: SymmetricKey, wrapped: String, keyID: String, vaultVersion: Int, vaultCreated: Int64, createdAt: Double) {
        self.key = key; self.wrapped = wrapped; self.keyID = keyID
        self.vaultVersion = vaultVersion; self.vaultCreated = vaultCreated; self.createdAt = createdAt
    }
}

public struct VaultEnvelope: Sendable {
    public var ciphertext: [UInt8]
    public var keyID: String
    public var annotations: [String: [UInt8]]
}

public final class VaultKeyring: Sendable {
    /// Annotation carrying the Vault-wrapped local KEK (`vault:vN:...`).
    public static let localKEKAnnotation = "local-kek.kekd.io"
    static let formatVersion: UInt8 = 1
    static let nonceSize = AES256GCM.nonceSize
    static let maxWrappedSize = 512
    /// Hard stop for one local KEK: well below the 2^32 random-nonce bound; the background loop renews far earlier.
    static let hardEncryptionLimit = 1 << 31

    /// Encrypts one local KEK may do: the flag, never more than the hard stop.
    static func encryptionLimit(_ config: VaultConfiguration) -> Int { min(config.localKEKMaxEncryptions, hardEncryptionLimit) }
    /// The background loop replaces a local KEK at 90 % of either limit, so Encrypt never meets the limit itself
    /// while Vault answers.
    static func renewalEncryptions(_ config: VaultConfiguration) -> Int { max(1, encryptionLimit(config) - encryptionLimit(config) / 10) }
    static func renewalAge(_ config: VaultConfiguration) -> Double { config.localKEKMaxAge * 0.9 }

    struct State {
        var active: ActiveKEK?
        /// Key metadata from the last successful read, and the key_id of each of its versions (Decrypt's check).
        private(set) var keyInfo: TransitKeyInfo?
        private(set) var keyIDs: [Int: String] = [:]
        /// Set when Vault says the key is gone or cannot encrypt: Status fails, Encrypt refuses.
        var blocked: String?
        var nextPoll: Double = 0

        mutating func setKeyInfo(_ info: TransitKeyInfo, config: VaultConfiguration) {
            if info == keyInfo { return }
            keyInfo = info
            keyIDs = info.versionCreated.reduce(into: [:]) { ids, entry in
                ids[entry.key] = VaultKeyring.keyID(config: config, version: entry.key, created: entry.value)
            }
        }
    }

    public let configuration: VaultConfiguration
    let client: VaultClient
    let tokens: TokenManager
    let transit: TransitAPI
    let cache: LocalKEKCache
    let batcher: UnwrapBatcher
    /// Wrapped local KEKs issued or unwrapped, kept across restarts to warm the cache with one Vault call.
    let record: IssuedKEKStore?
    private let state: LockedValue<State>
    /// Serialises making a new local KEK (background loop and an Encrypt that found its local KEK exhausted).
    private let renewLock = Lock()
    /// The last failed attempt to make a new local KEK: when, and why.
    private let renewalFailure = LockedValue<(at: Double, message: String)?>(nil)
    private let onCache: (@Sendable (Bool) -> Void)?
    private let log: Logger
    let problems: ProblemTracker
    private let now: @Sendable () -> Double
    private let stopped = Atomic<Bool>(false)
    private let wake = Condition()
    private let loopDone = DispatchSemaphore(value: 0)
    private let tick: Double

    public init(configuration: VaultConfiguration,
                onBackendCall: BackendCallHook? = nil,
                onCache: (@Sendable (Bool) -> Void)? = nil,
                log: Logger,
                maintenanceTick: Double = 1.0,
                startBackground: Bool = true) throws(KMSError) {
        self.configuration = configuration
        self.onCache = onCache
        self.log = log
        let problems = ProblemTracker(log: log)
        self.problems = problems
        self.now = { Date().timeIntervalSince1970 }
        self.tick = maintenanceTick
        transit = try TransitAPI.make(configuration: configuration, onCall: onBackendCall)
        client = transit.client
        tokens = transit.tokens
        let cache = LocalKEKCache(capacity: configuration.cacheSize, ttl: configuration.cacheTTL)
        self.cache = cache
        let state = LockedValue(State())
        self.state = state
        let transit = self.transit
        let timeout = configuration.requestTimeout
        let keyName = configuration.keyName
        batcher = UnwrapBatcher(cache: cache) { wrapped, deadline in
            Self.unwrapBatch(wrapped, transit: transit, problems: problems, deadline: min(deadline, Date(timeIntervalSinceNow: timeout))) { error in
                Self.revokeAccess(error, keyName: keyName, state: state, cache: cache, log: log)
            }
        }
        record = configuration.issuedKEKRecordPath.map { path in
            IssuedKEKStore(path: path, owner: Self.recordOwner(configuration), log: log)
        }
        if startBackground {
            startThread(name: "kekd-vault") { [self] in self.maintenanceLoop() }
        } else {
            loopDone.signal()
        }
    }

    // MARK: key_id

    /// Opaque, non-secret, and never reused: a recreated key has a different creation time for its versions.
    static func keyID(config: VaultConfiguration, version: Int, created: Int64) -> String {
        let endpoint = config.endpoint
        let fields = ["kekd-vault-key-id-v1", endpoint.secure ? "https" : "http", endpoint.host.lowercased(), String(endpoint.port),
                      config.namespace ?? "", config.transitMount, config.keyName, String(created), String(version)]
        var input: [UInt8] = []
        for field in fields { input += Array(field.utf8) + [0] }
        return "kekd-vault-" + hexString(SHA256.hash(input).prefix(16)) + "-v\(version)"
    }

    /// Who a record of wrapped local KEKs belongs to: the Transit key, wherever kekd reaches it from.
    static func recordOwner(_ config: VaultConfiguration) -> String {
        let endpoint = config.endpoint
        let fields = ["kekd-vault-record-v1", endpoint.host.lowercased(), String(endpoint.port), config.namespace ?? "",
                      config.transitMount, config.keyName]
        var input: [UInt8] = []
        for field in fields { input += Array(field.utf8) + [0] }
        return "vault-" + hexString(SHA256.hash(input).prefix(16))
    }

    // MARK: Status / Encrypt / Decrypt

    public struct Health: Sendable, Equatable {
        public var canEncrypt: Bool
        public var keyID: String
        public var detail: String
        /// Decrypt-only: whether the key was read and Vault has not refused it.
        public var canDecrypt = true
    }

    /// For metrics: whether the circuit breaker is failing calls fast, and when the token expires unless renewed
    /// (Unix seconds) with its lease; nil for a token that does not expire or before the first login.
    public func telemetry() -> (circuitOpen: Bool, tokenExpiry: Double?, tokenLease: Double?) {
        let open: Bool
        switch client.breaker.state {
        case .closed: open = false
        case .open, .halfOpen: open = true
        }
        guard let token = tokens.currentState, let lease = token.lease else { return (open, nil, nil) }
        return (open, token.obtainedAt + lease, lease)
    }

    /// Cached state only; never I/O.
    public func health() -> Health {
        let problem = problems.message
        if configuration.decryptOnly {
            // Ready to decrypt once the key was read and Vault has not refused it; it never encrypts.
            return state.withLock { s in
                if let blocked = s.blocked { return Health(canEncrypt: false, keyID: "", detail: blocked, canDecrypt: false) }
                guard s.keyInfo != nil else {
                    return Health(canEncrypt: false, keyID: "", detail: "Vault key not read yet" + (problem.map { ": \($0)" } ?? ""),
                                  canDecrypt: false)
                }
                return Health(canEncrypt: false, keyID: "", detail: problem.map { "decrypt-only (Vault problem: \($0))" } ?? "decrypt-only")
            }
        }
        return state.withLock { s in
            if let blocked = s.blocked { return Health(canEncrypt: false, keyID: s.active?.keyID ?? "", detail: blocked) }
            guard let active = s.active else {
                return Health(canEncrypt: false, keyID: "", detail: "no local KEK yet" + (problem.map { ": \($0)" } ?? ""))
            }
            if let exhausted = unusable(active) {
                return Health(canEncrypt: false, keyID: active.keyID, detail: exhausted + (problem.map { ": \($0)" } ?? ""))
            }
            let detail = problem.map { "ok (encrypting with the cached local KEK; Vault problem: \($0))" } ?? "ok"
            return Health(canEncrypt: true, keyID: active.keyID, detail: detail)
        }
    }

    /// Whether Status must fail for `active`: past its maximum age (the background loop had from 90 % of it on to
    /// replace it and could not), or past its encryption limit after a failed attempt to replace it.
    private func unusable(_ active: ActiveKEK) -> String? {
        guard let reason = active.exhaustion(config: configuration, now: now()) else { return nil }
        if now() - active.createdAt >= configuration.localKEKMaxAge { return reason + " and Vault has not wrapped a new one" }
        guard let failure = renewalFailure.withLock({ $0 }), failure.at >= active.createdAt else { return nil }
        return reason + " and Vault cannot wrap a new one (\(failure.message))"
    }

    /// Seals the DEK (seed) under the active local KEK. Calls Vault only when the local KEK reached a limit the
    /// background loop could not renew it before (then UNAVAILABLE if Vault cannot wrap a new one); that request is
    /// bounded by the caller's deadline.
    public func encrypt(_ plaintext: [UInt8], context: CallContext = .unbounded) throws(KMSError) -> VaultEnvelope {
        if configuration.decryptOnly { throw KMSError(.failedPrecondition, "the Vault backend is decrypt-only here") }
        let (activeOrNil, blocked) = state.withLock { ($0.active, $0.blocked) }
        if let blocked { throw KMSError(.failedPrecondition, blocked) }
        guard var active = activeOrNil else { throw KMSError(.unavailable, "no local KEK yet (Vault not reached)") }
        if now() - active.createdAt >= configuration.localKEKMaxAge { active = try replaceExhausted(active, context: context) }
        var used = active.encryptions.add(1, ordering: .relaxed).newValue
        if used > Self.encryptionLimit(configuration) {
            active = try replaceExhausted(active, context: context)
            used = active.encryptions.add(1, ordering: .relaxed).newValue
            guard used <= Self.encryptionLimit(configuration) else { throw KMSError(.unavailable, "local KEK exhausted; waiting for Vault to wrap a new one") }
        }
        if used >= Self.renewalEncryptions(configuration) { wakeMaintenance() }
        let annotations = [Self.localKEKAnnotation: Array(active.wrapped.utf8)]
        do {
            let ciphertext = try AES256GCM.sealWithRandomNonce(key: active.key, headerSize: 1, plaintext: plaintext,
                                                               aad: Self.aad(keyID: active.keyID, annotations: annotations)) {
                $0[0] = Self.formatVersion
            }
            return VaultEnvelope(ciphertext: ciphertext, keyID: active.keyID, annotations: annotations)
        } catch {
            throw KMSError(.internalError, "local encryption failed: \(error.description)")
        }
    }

    /// Encrypt waits on Vault only to replace a local KEK past its age or use limit (normally the background loop
    /// replaced it before).
    func encryptWouldBlock() -> Bool {
        guard !configuration.decryptOnly, let active = state.withLock({ $0.active }) else { return false }
        return active.exhaustion(config: configuration, now: now()) != nil
    }

    /// Decrypt waits on Vault only when its local KEK is not cached.
    func decryptWouldBlock(annotations: [String: [UInt8]]) -> Bool {
        guard let bytes = annotations[Self.localKEKAnnotation], let (wrapped, _) = Self.parseWrapped(bytes) else { return false }
        return !cache.contains(wrapped)
    }

    /// A local KEK that is not cached is unwrapped by Vault; the call waits for it until the caller's deadline (at most
    /// the configured request timeout) and stops waiting when the caller cancels.
    public func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]],
                        context: CallContext = .unbounded) throws(KMSError) -> [UInt8] {
        let minimum = 1 + Self.nonceSize + AES256GCM.tagSize
        guard ciphertext.count >= minimum, ciphertext[0] == Self.formatVersion else {
            throw KMSError(.invalidArgument, "ciphertext is not a kekd Vault envelope")
        }
        guard let wrappedBytes = annotations[Self.localKEKAnnotation] else {
            throw KMSError(.invalidArgument, "annotation \(Self.localKEKAnnotation) missing")
        }
        guard let (wrapped, version) = Self.parseWrapped(wrappedBytes) else {
            throw KMSError(.invalidArgument, "annotation \(Self.localKEKAnnotation) is not a Vault ciphertext")
        }
        let (currentKeyID, minimumVersion) = state.withLock { ($0.keyIDs[version], $0.keyInfo?.minDecryptionVersion ?? 1) }
        guard currentKeyID == keyID || Self.isOwnKeyIDFormat(keyID, version: version) else {
            throw KMSError(.invalidArgument, "key_id was not issued by kekd's Vault backend for this key version")
        }
        // Checked before the cache: retiring a version in Vault must stop kekd at once, cached local KEKs included.
        guard version >= minimumVersion else {
            throw KMSError(.failedPrecondition, "the local KEK is wrapped under Vault key version \(version), below the key's "
                             + "min_decryption_version \(minimumVersion)")
        }
        let key: SymmetricKey
        if let cached = cache.get(wrapped) {
            onCache?(true)
            record?.touch(wrapped: wrapped)
            key = cached
        } else {
            onCache?(false)
            key = try batcher.unwrap(wrapped, deadline: Date(timeIntervalSinceNow: context.boundedSeconds(configuration.requestTimeout)),
                                     context: context)
            record?.note(wrapped: wrapped, keyVersion: version)
        }
        do {
            return try AES256GCM.open(key: key, nonce: ciphertext[1...Self.nonceSize], sealed: ciphertext[(1 + Self.nonceSize)...],
                                      aad: Self.aad(keyID: keyID, annotations: annotations))
        } catch {
            // A tampered or foreign envelope is the caller's bad input, as in the file backend (README: INVALID_ARGUMENT).
            throw KMSError(.invalidArgument, "ciphertext or annotations failed authentication")
        }
    }

    /// Whether Decrypt accepts `keyID` for a local KEK wrapped under Vault `version`. The key_id we would give that
    /// version now is accepted at once. Otherwise a key_id of our own format for the same version is accepted too: it
    /// may come from before an address/namespace/mount spelling changed, or from a version another node saw first.
    /// That is safe because the key_id is bound into the envelope's AAD: a key_id we did not issue for this envelope
    /// fails authentication. Anything else is refused before Vault is asked.
    func accepts(keyID: String, version: Int) -> Bool {
        if let current = state.withLock({ $0.keyIDs[version] }), current == keyID { return true }
        return Self.isOwnKeyIDFormat(keyID, version: version)
    }

    /// `kekd-vault-<32 hex>-v<version>`.
    static func isOwnKeyIDFormat(_ keyID: String, version: Int) -> Bool {
        let prefix = "kekd-vault-", suffix = "-v\(version)"
        guard keyID.hasPrefix(prefix), keyID.hasSuffix(suffix), keyID.utf8.count == prefix.utf8.count + 32 + suffix.utf8.count else { return false }
        return keyID.utf8.dropFirst(prefix.utf8.count).prefix(32).allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// AAD binding the key_id and every annotation (length-prefixed, sorted by key).
    static func aad(keyID: String, annotations: [String: [UInt8]]) -> [UInt8] {
        var out = Array("kekd-vault-envelope-v1".utf8)
        func put(_ bytes: [UInt8]) {
            let n = UInt32(truncatingIfNeeded: bytes.count)
            out += [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + bytes
        }
        put(Array(keyID.utf8))
        for name in annotations.keys.sorted() {
            put(Array(name.utf8))
            put(annotations[name] ?? [])
        }
        return out
    }

    /// `vault:v<N>:<base64>` with sane bounds, or nil.
    static func parseWrapped(_ bytes: [UInt8]) -> (String, Int)? {
        guard bytes.count <= maxWrappedSize, bytes.count > 9, bytes.starts(with: Array("vault:v".utf8)) else { return nil }
        let rest = bytes.dropFirst(7)
        guard let colon = rest.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let digits = rest[rest.startIndex..<colon]
        guard (1...9).contains(digits.count), digits.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        let version = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
        let body = rest[(colon + 1)...]
        let base64: (UInt8) -> Bool = { ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 43 || $0 == 47 || $0 == 61 }
        guard version > 0, !body.isEmpty, body.allSatisfy(base64) else { return nil }
        return (String(decoding: bytes, as: UTF8.self), version)
    }

    static func unwrapBatch(_ wrapped: [String], transit: TransitAPI, problems: ProblemTracker, deadline: Date,
                            onAccessError: (KMSError) -> Void = { _ in }) -> [Result<SymmetricKey, KMSError>] {
        do {
            let results = try transit.decryptBatch(wrapped, deadline: deadline)
            problems.clear(.vault)
            return results.map { result in
                result.flatMap { (plain: [UInt8]) -> Result<SymmetricKey, KMSError> in
                    var bytes = plain
                    defer { wipe(&bytes) }
                    guard let key = try? SymmetricKey(bytes: bytes) else {
                        return .failure(KMSError(.invalidArgument, "Vault-wrapped local KEK has the wrong size"))
                    }
                    return .success(key)
                }
            }
        } catch {
            if error.code != .invalidArgument { problems.note(.vault, error.message) }
            onAccessError(error)
            return Array(repeating: .failure(error), count: wrapped.count)
        }
    }

    // MARK: Background maintenance

    /// Waits until a local KEK exists (or Vault says it cannot), at most `timeout` seconds.
    public func waitUntilReady(timeout: Double) -> Bool {
        let decryptOnly = configuration.decryptOnly
        let ready = { (s: State) in (decryptOnly ? s.keyInfo != nil : s.active != nil) && s.blocked == nil }
        let end = Date(timeIntervalSinceNow: timeout)
        while Date() < end {
            if state.withLock({ ready($0) }) { return true }
            sleep(seconds: 0.02)
        }
        return state.withLock { ready($0) }
    }

    func wakeMaintenance() {
        wake.lock(); wake.signal(); wake.unlock()
    }

    /// SIGHUP: re-read credential and TLS files now.
    public func reload() {
        client.http.reset()
        tokens.invalidate()
        wakeMaintenance()
    }

    public func close() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        wakeMaintenance()
        _ = loopDone.wait(timeout: .now() + 5)
        client.http.reset()
    }

    private func maintenanceLoop() {
        warmFromRecord()
        while !stopped.load(ordering: .relaxed) {
            maintain()
            record?.save(now: now())
            wake.lock()
            if !stopped.load(ordering: .relaxed) { _ = wake.wait(seconds: tick) }
            wake.unlock()
        }
        record?.save(now: now(), force: true)
        loopDone.signal()
    }

    /// At start: unwraps the most recently used local KEKs of the record with one batched Vault call, so the
    /// apiserver's decrypts after a reboot find them cached. Concurrent Decrypts missing the same keys join that call.
    /// Entries Vault refuses are dropped from the record; a failed call leaves it for next time.
    func warmFromRecord() {
        guard let record else { return }
        record.load()
        let recent = record.mostRecent(min(IssuedKEKStore.defaultCapacity, configuration.cacheSize))
            .filter { Self.parseWrapped(Array($0.wrapped.utf8)) != nil }
        guard !recent.isEmpty else { return }
        let wrapped = recent.map(\.wrapped)
        let results = batcher.unwrapAll(wrapped, deadline: Date(timeIntervalSinceNow: configuration.requestTimeout))
        var refused: [String] = []
        var warmed = 0
        for (w, result) in zip(wrapped, results) {
            switch result {
            case .success: warmed += 1
            case .failure(let error) where error.code == .invalidArgument: refused.append(w)
            case .failure: break
            }
        }
        record.remove(refused)
        log.info("warmed \(warmed) of \(wrapped.count) recorded local KEKs with one batched Vault call"
            + (refused.isEmpty ? "" : "; \(refused.count) refused by Vault and dropped from the record"))
    }

    /// One maintenance step (also callable from tests): token upkeep, key poll, local KEK renewal.
    func maintain() {
        let deadline = Date(timeIntervalSinceNow: configuration.requestTimeout)
        if tokens.currentState != nil {
            if let error = tokens.maintain(deadline: deadline) {
                problems.note(error.code == .unavailable ? .vault : .token, error.message)
            } else {
                problems.clear(.token)
            }
        }
        let t = now()
        let decryptOnly = configuration.decryptOnly
        let (active, due) = state.withLock { ($0.active, t >= $0.nextPoll || ($0.active == nil && !decryptOnly)) }
        let overused = active.map { $0.encryptions.load(ordering: .relaxed) >= Self.renewalEncryptions(configuration)
            || t - $0.createdAt >= Self.renewalAge(configuration) } ?? false
        guard due || overused else { return }
        do {
            let info = try transit.readKey(deadline: deadline)
            if Self.isStale(info, active: active) {
                problems.clear(.vault)
                return
            }
            let reason = info.supportsEncryption && !decryptOnly ? Self.needsNewKEK(active: active, info: info, config: configuration, now: t) : nil
            let raisedMinimum = state.withLock { s -> Int? in
                let before = s.keyInfo?.minDecryptionVersion ?? 1
                return info.minDecryptionVersion > before ? info.minDecryptionVersion : nil
            }
            if let raisedMinimum { cache.removeVersions(below: raisedMinimum) }
            state.withLock { s in
                s.setKeyInfo(info, config: configuration)
                s.nextPoll = t + configuration.keyPollInterval
                // Unblock only when the current local KEK stays valid; otherwise installNewKEK unblocks, so Status
                // never shows the key_id of a deleted key again.
                if !info.supportsEncryption && !decryptOnly { s.blocked = "Vault key \(configuration.keyName) does not support encryption" }
                else if reason == nil { s.blocked = nil }
            }
            if let reason { try installNewKEK(info: info, reason: reason) }
            problems.clear(.vault)
        } catch {
            if Self.revokeAccess(error, keyName: configuration.keyName, state: state, cache: cache, log: log) {
                // 403 or 404: stop encrypting so the apiserver stops writing with a key kekd may no longer use, and
                // look again soon: access may come back (a new token file, a recreated key).
                state.withLock { $0.nextPoll = t + min(configuration.keyPollInterval, 5) }
            } else {
                // The read may have worked and the wrap failed: retry soon, not a poll interval later. Network
                // failures retry every tick (the circuit breaker paces them); refusals every few seconds.
                let retry = error.code == .unavailable ? t : t + min(configuration.keyPollInterval, 5)
                state.withLock { $0.nextPoll = retry }
            }
            problems.note(.vault, error.message)
        }
    }

    /// Why a new local KEK is needed, or nil. Moves only forward: a lower version of the same key (a stale read)
    /// is ignored, while a recreated key (different creation time) or a higher version is followed.
    static func needsNewKEK(active: ActiveKEK?, info: TransitKeyInfo, config: VaultConfiguration, now: Double) -> String? {
        guard let active else { return "first local KEK" }
        if info.latestVersion > active.vaultVersion { return "Vault key rotated to version \(info.latestVersion)" }
        if let created = info.versionCreated[active.vaultVersion], created != active.vaultCreated { return "Vault key was recreated" }
        if isStale(info, active: active) { return nil }
        if info.versionCreated[active.vaultVersion] == nil { return "Vault key was recreated" }
        if active.encryptions.load(ordering: .relaxed) >= renewalEncryptions(config) { return "local KEK near its encryption limit" }
        if now - active.createdAt >= renewalAge(config) { return "local KEK near its maximum age" }
        return nil
    }

    /// A read that lacks our version and whose latest version is not newer than ours comes from a lagging replica
    /// (or a trimmed key we can no longer use anyway): it must not move the key_id back.
    static func isStale(_ info: TransitKeyInfo, active: ActiveKEK?) -> Bool {
        guard let active, info.latestVersion < active.vaultVersion, info.versionCreated[active.vaultVersion] == nil else { return false }
        let latestCreated = info.versionCreated[info.latestVersion] ?? 0
        return latestCreated <= active.vaultCreated
    }

    /// Makes a new local KEK under the latest known Vault version now (tests; operators get it via the limits).
    func renewLocalKEK() throws(KMSError) {
        guard let info = state.withLock({ $0.keyInfo }) else { throw KMSError(.unavailable, "Vault key not read yet") }
        try installNewKEK(info: info, reason: "requested")
    }

    /// Called by Encrypt when `exhausted` may not encrypt any more: the first caller has Vault wrap a new local KEK,
    /// the others wait for it and use it. After a failed attempt, callers fail at once for a second instead of each
    /// waiting for Vault again.
    private func replaceExhausted(_ exhausted: ActiveKEK, context: CallContext) throws(KMSError) -> ActiveKEK {
        renewLock.lock()
        defer { renewLock.unlock() }
        let current = state.withLock { $0.active }
        if let current, current !== exhausted, current.exhaustion(config: configuration, now: now()) == nil { return current }
        let reason = exhausted.exhaustion(config: configuration, now: now()) ?? "the local KEK reached a limit"
        if let failure = renewalFailure.withLock({ $0 }), now() - failure.at < 1 {
            throw KMSError(.unavailable, "\(reason) and Vault cannot wrap a new one: \(failure.message)")
        }
        guard let info = state.withLock({ $0.keyInfo }) else { throw KMSError(.unavailable, "\(reason); Vault key not read yet") }
        do {
            try installNewKEKLocked(info: info, reason: reason, seconds: context.boundedSeconds(configuration.requestTimeout))
        } catch {
            throw KMSError(.unavailable, "\(reason) and Vault cannot wrap a new one: \(error.message)")
        }
        guard let fresh = state.withLock({ $0.active }), fresh !== exhausted else { throw KMSError(.unavailable, "\(reason)") }
        return fresh
    }

    private func installNewKEK(info: TransitKeyInfo, reason: String) throws(KMSError) {
        renewLock.lock()
        defer { renewLock.unlock() }
        try installNewKEKLocked(info: info, reason: reason, seconds: configuration.requestTimeout)
    }

    /// Called with `renewLock` held.
    /// Called with `renewLock` held; the wrap request gets at most `seconds`.
    private func installNewKEKLocked(info: TransitKeyInfo, reason: String, seconds: Double) throws(KMSError) {
        do {
            try makeNewKEK(info: info, reason: reason, seconds: seconds)
            renewalFailure.withLock { $0 = nil }
        } catch {
            let t = now()
            renewalFailure.withLock { $0 = (t, error.message) }
            // Whoever asked (background loop, Encrypt), a 403/404 on the wrap ends the use of every local KEK.
            Self.revokeAccess(error, keyName: configuration.keyName, state: state, cache: cache, log: log)
            throw error
        }
    }

    private func makeNewKEK(info: TransitKeyInfo, reason: String, seconds: Double) throws(KMSError) {
        let version = info.latestVersion
        let key: SymmetricKey
        do { key = try SymmetricKey.random() } catch { throw KMSError(.internalError, "cannot generate local KEK: \(error.description)") }
        let wrapped = try transit.encrypt(key.bytes, keyVersion: version, deadline: Date(timeIntervalSinceNow: seconds))
        let created = info.versionCreated[version] ?? 0
        let fresh = ActiveKEK(key: key, wrapped: wrapped, keyID: Self.keyID(config: configuration, version: version, created: created),
                              vaultVersion: version, vaultCreated: created, createdAt: now())
        cache.put(wrapped, key)
        record?.note(wrapped: wrapped, keyVersion: version)
        let previous = state.withLock { s -> String? in
            let old = s.active?.keyID
            s.active = fresh
            s.blocked = nil
            return old
        }
        if previous != fresh.keyID { log.info("new local KEK (\(reason)); key_id \(fresh.keyID)") }
    }

    /// Vault answered 403 (access revoked or denied) or said the key is gone: every cached local KEK is dropped and
    /// Encrypt and Status fail until a key read succeeds again. Returns whether `error` was such an answer.
    @discardableResult
    static func revokeAccess(_ error: KMSError, keyName: String, state: LockedValue<State>, cache: LocalKEKCache,
                             log: Logger) -> Bool {
        guard error.code == .permissionDenied || error.code == .failedPrecondition else { return false }
        let dropped = cache.count
        cache.clear()
        let first = state.withLock { s -> Bool in
            defer { s.blocked = error.message }
            return s.blocked == nil
        }
        if first {
            log.warn("Vault refused kekd the key \(keyName): dropped \(dropped) cached local KEKs; Encrypt and Status fail "
                + "until Vault allows access again (\(error.message))")
        }
        return true
    }

    /// Counts for tests: Vault decrypt batches, logins, renewals, TLS connections.
    var decryptBatches: Int { batcher.batches.load(ordering: .relaxed) }
}

/// Current Vault problems by source ("vault": requests failing, "token": token upkeep failing), each logged once
/// when it starts and once when it ends, so an outage shows in the log without one line per failed call and one
/// source's recovery does not hide the other's problem.
final class ProblemTracker: Sendable {
    enum Source: String, Sendable, CaseIterable { case vault, token }
    private let current = LockedValue<[Source: String]>([:])
    private let log: Logger

    init(log: Logger) { self.log = log }

    /// All current problems in one line, nil when there are none.
    var message: String? {
        let problems = current.withLock { $0 }
        let parts = Source.allCases.compactMap { problems[$0] }
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }

    func note(_ source: Source, _ message: String) {
        let first = current.withLock { c -> Bool in
            defer { c[source] = message }
            return c[source] == nil
        }
        if first { log.warn("Vault problem (\(source.rawValue)): \(message)") }
    }

    func clear(_ source: Source) {
        let had = current.withLock { c -> Bool in
            defer { c[source] = nil }
            return c[source] != nil
        }
        if had { log.info(source == .vault ? "Vault reachable again" : "Vault token upkeep working again") }
    }
}
