// The Vault token's lifecycle: obtain (token file, AppRole, TLS certificate), look up its TTL, renew at about two
// thirds of it, log in again when renewal fails, the token is revoked or reaches its max TTL. Tokens never leave this
// type except as the X-Vault-Token header value, and never appear in messages.
import FoundationEssentials
import JSON
import KMS
import Glibc
import Locking
import Synchronization

public enum VaultAuthMethod: Sendable, Equatable {
    case tokenFile(path: String)
    case appRole(roleIDFile: String, secretIDFile: String, mount: String)
    case cert(mount: String, role: String?)

    var name: String {
        switch self {
        case .tokenFile: return "token"
        case .appRole: return "approle"
        case .cert: return "cert"
        }
    }
}

final class TokenManager: Sendable {
    struct TokenState {
        var token: String
        var obtainedAt: Double
        /// nil: the token does not expire (ttl 0).
        var ttl: Double?
        var renewable: Bool
        var renewAt: Double?
        var generation: Int
        /// Lease of the last login or renewal (ttl keeps the first one, which renewals are compared with).
        var lease: Double?
    }

    let method: VaultAuthMethod
    private let client: VaultClient
    private let tokenFile: SecretFile?
    private let roleIDFile: SecretFile?
    private let secretIDFile: SecretFile?
    private let state = LockedValue<TokenState?>(nil)
    /// Serialises logins so a burst of callers with no token causes one login, not one each.
    private let loginLock = Lock()
    private let generationCounter = Atomic<Int>(0)
    private let lastDenialLogin = LockedValue<Double>(-1e9)
    private let now: @Sendable () -> Double
    /// Counts for tests and metrics.
    let logins = Atomic<Int>(0)
    let renewals = Atomic<Int>(0)

    init(method: VaultAuthMethod, client: VaultClient, now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.method = method
        self.client = client
        self.now = now
        switch method {
        case .tokenFile(let path): tokenFile = SecretFile(path: path, what: "Vault token file"); roleIDFile = nil; secretIDFile = nil
        case .appRole(let r, let s, _):
            tokenFile = nil
            roleIDFile = SecretFile(path: r, what: "AppRole role-id file", secret: false)
            secretIDFile = SecretFile(path: s, what: "AppRole secret-id file")
        case .cert: tokenFile = nil; roleIDFile = nil; secretIDFile = nil
        }
    }

    var currentState: TokenState? { state.withLock { $0 } }

    /// The token to use now, obtaining one first if there is none.
    func token(deadline: Date) throws(KMSError) -> (String, generation: Int) {
        if let s = state.withLock({ $0 }) { return (s.token, s.generation) }
        return try obtain(replacing: nil, deadline: deadline)
    }

    /// Forgets the token (SIGHUP or a 403), so the next call logs in again / re-reads the file.
    func invalidate(generation: Int? = nil) {
        state.withLock { s in
            if generation == nil || s?.generation == generation { s = nil }
        }
    }

    /// Gets a fresh token unless another thread already replaced generation `replacing`.
    @discardableResult
    func obtain(replacing: Int?, deadline: Date) throws(KMSError) -> (String, generation: Int) {
        loginLock.lock()
        defer { loginLock.unlock() }
        if let s = state.withLock({ $0 }), s.generation != replacing { return (s.token, s.generation) }
        let fresh = try login(deadline: deadline)
        state.withLock { $0 = fresh }
        return (fresh.token, fresh.generation)
    }

    private func login(deadline: Date) throws(KMSError) -> TokenState {
        let t = now()
        let generation = generationCounter.add(1, ordering: .relaxed).newValue
        switch method {
        case .tokenFile:
            guard let file = tokenFile else { throw KMSError(.internalError, "token file missing") }
            let token = String(decoding: try file.read(), as: UTF8.self)
            let reply = try client.request(op: .lookupSelf, method: "GET", path: "auth/token/lookup-self", token: token, deadline: deadline)
            guard reply.status == 200 else { throw VaultClient.error("token lookup-self", reply) }
            let ttl = reply.data["ttl"]?.int.map(Double.init) ?? 0
            let renewable = reply.data["renewable"]?.bool ?? false
            return makeState(token: token, ttl: ttl, renewable: renewable, at: t, generation: generation)
        case .appRole(_, _, let mount):
            guard let roleFile = roleIDFile, let secretFile = secretIDFile else { throw KMSError(.internalError, "approle files missing") }
            let body: JSONValue = .object(["role_id": .string(String(decoding: try roleFile.read(), as: UTF8.self)),
                                           "secret_id": .string(String(decoding: try secretFile.read(), as: UTF8.self))])
            return try loginReply(path: "auth/\(mount)/login", body: body, at: t, generation: generation, deadline: deadline)
        case .cert(let mount, let role):
            var body: [String: JSONValue] = [:]
            if let role { body["name"] = .string(role) }
            return try loginReply(path: "auth/\(mount)/login", body: .object(body), at: t, generation: generation, deadline: deadline)
        }
    }

    private func loginReply(path: String, body: JSONValue, at t: Double, generation: Int, deadline: Date) throws(KMSError) -> TokenState {
        let reply = try client.request(op: .login, method: "POST", path: path, body: body, token: nil, deadline: deadline)
        guard reply.status == 200 else {
            var error = VaultClient.error("\(method.name) login", reply)
            // Vault refuses bad credentials with 400 ("invalid role or secret ID"): that is a denial, not a bad request.
            if error.code == .invalidArgument { error.code = .permissionDenied }
            throw error
        }
        guard let token = reply.auth["client_token"]?.string, !token.isEmpty else {
            throw KMSError(.unavailable, "Vault \(method.name) login returned no client_token")
        }
        logins.add(1, ordering: .relaxed)
        let ttl = reply.auth["lease_duration"]?.int.map(Double.init) ?? 0
        return makeState(token: token, ttl: ttl, renewable: reply.auth["renewable"]?.bool ?? false, at: t, generation: generation)
    }

    private func makeState(token: String, ttl: Double, renewable: Bool, at t: Double, generation: Int) -> TokenState {
        let ttlValue: Double? = ttl > 0 ? ttl : nil
        return TokenState(token: token, obtainedAt: t, ttl: ttlValue, renewable: renewable,
                          renewAt: ttlValue.map { t + $0 * 2 / 3 }, generation: generation, lease: ttlValue)
    }

    private func credentialFilesChanged() -> Bool {
        [tokenFile, roleIDFile, secretIDFile].contains { $0?.changed() ?? false }
    }

    /// Background step: re-read a changed token/secret file, renew at 2/3 TTL, re-login when renewal is refused or
    /// the token is near its max TTL. Errors are returned for logging; the caller keeps going.
    func maintain(deadline: Date) -> KMSError? {
        let credentialsChanged = credentialFilesChanged()
        guard let s = state.withLock({ $0 }) else {
            do { try obtain(replacing: nil, deadline: deadline) } catch { return error }
            return nil
        }
        // A rewritten token file means the operator replaced the token: adopt it now.
        if tokenFile != nil && credentialsChanged {
            do { try obtain(replacing: s.generation, deadline: deadline) } catch { return error }
            return nil
        }
        guard let renewAt = s.renewAt, now() >= renewAt else { return nil }
        if s.renewable {
            do {
                let reply = try client.request(op: .renewSelf, method: "POST", path: "auth/token/renew-self", body: [:],
                                               token: s.token, deadline: deadline)
                if reply.status == 200 {
                    let lease = Double(reply.auth["lease_duration"]?.int ?? 0)
                    renewals.add(1, ordering: .relaxed)
                    let t = now()
                    state.withLock { current in
                        guard current?.generation == s.generation, lease > 0 else { return }
                        current?.obtainedAt = t
                        current?.lease = lease
                        current?.renewAt = t + lease * 2 / 3
                    }
                    // A lease shorter than the token's TTL means the max TTL is near: log in again while the old
                    // token still works (login methods only; a token file can only be replaced by its owner).
                    let capped = s.ttl.map { lease < $0 * 0.9 } ?? false
                    if capped && tokenFile == nil {
                        do { try obtain(replacing: s.generation, deadline: deadline) } catch { return error }
                        return nil
                    }
                    return lease > 0 ? nil : KMSError(.permissionDenied, "Vault token reached its max TTL; replace the token file")
                }
                if reply.status != 403 && reply.status != 400 { return VaultClient.error("token renew-self", reply) }
            } catch {
                if error.code == .unavailable { return error }  // Vault down: try again on the next tick
            }
        }
        // Not renewable, revoked, or renewal refused: replace the token. A token file can only be re-read.
        if tokenFile != nil && !credentialsChanged {
            let expired = s.ttl.map { now() >= s.obtainedAt + $0 } ?? false
            if expired { invalidate(generation: s.generation) }
            return KMSError(.permissionDenied, "Vault token from file cannot be renewed; replace the token file")
        }
        do { try obtain(replacing: s.generation, deadline: deadline) } catch { return error }
        return nil
    }

    /// Runs `body` with the current token; on 403 obtains a new token once and retries, then gives up with
    /// PERMISSION_DENIED.
    /// A policy that denies an operation would otherwise cost a login per call: one 403-driven login per 5 s, unless
    /// the credential files changed since they were last read.
    func withToken(deadline: Date, _ body: (String) throws(KMSError) -> VaultReply) throws(KMSError) -> VaultReply {
        let (token, generation) = try token(deadline: deadline)
        let reply = try body(token)
        guard reply.status == 403 else { return reply }
        // Another thread may already have replaced the token (background renewal, a changed token file), or be
        // doing so right now: wait for any login in progress, then look.
        loginLock.lock()
        let latest = state.withLock { $0 }
        loginLock.unlock()
        if let current = latest, current.generation != generation {
            let again = try body(current.token)
            if again.status == 403 { throw KMSError(.permissionDenied, "Vault denied the request: \(again.errorText)") }
            return again
        }
        let t = now()
        let filesChanged = credentialFilesChanged()
        let mayLogin = lastDenialLogin.withLock { last -> Bool in
            guard t - last >= 5 || filesChanged else { return false }
            last = t
            return true
        }
        guard mayLogin else { throw KMSError(.permissionDenied, "Vault denied the request: \(reply.errorText)") }
        let (fresh, _) = try obtain(replacing: generation, deadline: deadline)
        let again = try body(fresh)
        if again.status == 403 { throw KMSError(.permissionDenied, "Vault denied the request after re-authenticating: \(again.errorText)") }
        return again
    }
}
