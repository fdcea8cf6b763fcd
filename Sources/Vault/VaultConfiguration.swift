// `kekd serve --backend vault ...` options: names, defaults and validation. Secrets are only ever file paths here.
import FoundationEssentials
import Glibc
import KMS

public struct VaultConfiguration: Sendable, Equatable {
    public var address: String
    public var endpoint: Endpoint
    public var transitMount = "transit"
    public var keyName: String
    public var namespace: String?
    public var auth: VaultAuthMethod
    public var tls: TLSSettings
    /// Per connection attempt (TCP + TLS handshake).
    public var connectTimeout: Double = 1.0
    /// Whole Vault operation including retries; must fit inside the apiserver's 3 s call deadline.
    public var requestTimeout: Double = 2.5
    public var keyPollInterval: Double = 30
    /// A new local KEK is made after this many Encrypts (far below the 2^32 random-nonce bound of AES-GCM)…
    public var localKEKMaxEncryptions = 1_000_000
    /// …or after this age, whichever comes first.
    public var localKEKMaxAge: Double = 24 * 3600
    /// Unwrapped local KEKs kept in memory for Decrypt.
    public var cacheSize = 10_000
    /// How long an unwrapped local KEK stays cached: the longest a kekd whose Vault access was revoked can still
    /// decrypt with it when Vault does not tell it so (a 403/404 clears the cache at once).
    public var cacheTTL: Double = 300
    /// Tests only: permits http:// addresses.
    public var insecureAllowHTTP = false
    /// Decrypt only (another backend encrypts): no local KEK is ever made, so kekd needs no permission to encrypt
    /// with the key; the key is still polled (min_decryption_version, revocation). Set by kekd, not a flag.
    public var decryptOnly = false
    /// Where the record of issued and unwrapped local KEKs lives (kekd: `STATE_DIR/vault-keks.json`); nil = none.
    /// At start the most recent ones are unwrapped with one batched call. Set by kekd, not a flag.
    public var issuedKEKRecordPath: String?

    public init(address: String, keyName: String, auth: VaultAuthMethod, tls: TLSSettings = .init()) throws(KMSError) {
        self.address = address
        do { self.endpoint = try Endpoint(url: address, what: "Vault address") } catch { throw KMSError(.invalidArgument, error.message) }
        self.keyName = keyName
        self.auth = auth
        self.tls = tls
    }

    public static let flagNames: [String] = [
        "vault-addr", "vault-transit-mount", "vault-key", "vault-namespace",
        "vault-auth", "vault-token-file",
        "vault-approle-role-id-file", "vault-approle-secret-id-file", "vault-approle-mount",
        "vault-cert-auth-mount", "vault-cert-auth-role",
        "vault-ca-file", "vault-client-cert", "vault-client-key", "vault-tls-server-name",
        "vault-connect-timeout", "vault-request-timeout", "vault-key-poll-interval",
        "vault-local-kek-max-encryptions", "vault-local-kek-max-age", "vault-cache-size",
        "vault-insecure-allow-http", "vault-cache-ttl",
    ]

    /// Builds and validates a configuration from `--name value` pairs (names without `--`). Errors are one line.
    public static func parse(_ flags: [String: String]) throws(KMSError) -> VaultConfiguration {
        func bad(_ message: String) -> KMSError { KMSError(.invalidArgument, message) }
        for name in flags.keys where !flagNames.contains(name) { throw bad("unknown Vault option --\(name)") }
        func value(_ name: String) -> String? {
            guard let v = flags[name]?.trimmingSpaces(), !v.isEmpty else { return nil }
            return v
        }
        func readableFile(_ name: String) throws(KMSError) -> String? {
            guard let path = value(name) else { return nil }
            guard FileManager.default.isReadableFile(atPath: path) else { throw bad("--\(name): cannot read \(path)") }
            return path
        }
        /// A file holding a secret: also private to kekd, as the key file must be.
        func secretFile(_ name: String, _ what: String) throws(KMSError) -> String? {
            guard let path = try readableFile(name) else { return nil }
            if let problem = CredentialFile.checkProblem(path, what: what) { throw bad("--\(name): \(problem)") }
            return path
        }
        guard let address = value("vault-addr") else { throw bad("--vault-addr is required (e.g. https://vault.example:8200)") }
        guard let keyName = value("vault-key") else { throw bad("--vault-key is required (the Transit key name)") }
        guard keyName.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }), keyName != ".", keyName != ".." else {
            throw bad("--vault-key: \(keyName) is not a valid Transit key name")
        }
        let insecure = try boolean(value("vault-insecure-allow-http") ?? "false", "vault-insecure-allow-http")
        let endpoint: Endpoint
        do { endpoint = try Endpoint(url: address, what: "Vault address") } catch { throw bad("--vault-addr: \(error.message)") }
        if !endpoint.secure && !insecure { throw bad("--vault-addr must use https:// (http:// only with --vault-insecure-allow-http true, for tests)") }

        let tls = TLSSettings(caFile: try readableFile("vault-ca-file"), clientCertFile: try readableFile("vault-client-cert"),
                              clientKeyFile: try secretFile("vault-client-key", "Vault client key file"), serverName: value("vault-tls-server-name"))
        if (tls.clientCertFile == nil) != (tls.clientKeyFile == nil) { throw bad("--vault-client-cert and --vault-client-key go together") }

        let tokenFile = try secretFile("vault-token-file", "Vault token file")
        let roleIDFile = try readableFile("vault-approle-role-id-file")
        let secretIDFile = try secretFile("vault-approle-secret-id-file", "AppRole secret-id file")
        if (roleIDFile == nil) != (secretIDFile == nil) { throw bad("AppRole needs both --vault-approle-role-id-file and --vault-approle-secret-id-file") }
        let requested = value("vault-auth") ?? (tokenFile != nil ? "token" : roleIDFile != nil ? "approle" : tls.clientCertFile != nil ? "cert" : "")
        let auth: VaultAuthMethod
        switch requested {
        case "token":
            guard let tokenFile else { throw bad("--vault-auth token needs --vault-token-file") }
            auth = .tokenFile(path: tokenFile)
        case "approle":
            guard let roleIDFile, let secretIDFile else { throw bad("--vault-auth approle needs --vault-approle-role-id-file and --vault-approle-secret-id-file") }
            auth = .appRole(roleIDFile: roleIDFile, secretIDFile: secretIDFile, mount: try mountPath(value("vault-approle-mount") ?? "approle", "vault-approle-mount"))
        case "cert":
            guard tls.clientCertFile != nil, endpoint.secure else { throw bad("--vault-auth cert needs https and --vault-client-cert/--vault-client-key") }
            auth = .cert(mount: try mountPath(value("vault-cert-auth-mount") ?? "cert", "vault-cert-auth-mount"), role: value("vault-cert-auth-role"))
        case "":
            throw bad("no Vault credentials: give --vault-token-file, the AppRole files, or a client certificate")
        default:
            throw bad("--vault-auth must be token, approle or cert (got \(requested))")
        }

        var config = VaultConfiguration(address: address, endpoint: endpoint, keyName: keyName, auth: auth, tls: tls)
        config.transitMount = try mountPath(value("vault-transit-mount") ?? "transit", "vault-transit-mount")
        if let ns = value("vault-namespace") {
            guard ns.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_./".contains($0)) }) else { throw bad("--vault-namespace: invalid namespace") }
            config.namespace = ns
        }
        config.connectTimeout = try duration(value("vault-connect-timeout") ?? "1s", "vault-connect-timeout", max: 2.9)
        config.requestTimeout = try duration(value("vault-request-timeout") ?? "2.5s", "vault-request-timeout", max: 2.9)
        config.keyPollInterval = try duration(value("vault-key-poll-interval") ?? "30s", "vault-key-poll-interval", max: 86400)
        config.localKEKMaxAge = try duration(value("vault-local-kek-max-age") ?? "24h", "vault-local-kek-max-age", max: 365 * 86400)
        config.localKEKMaxEncryptions = try count(value("vault-local-kek-max-encryptions") ?? "1000000", "vault-local-kek-max-encryptions", max: 1 << 32)
        config.cacheSize = try count(value("vault-cache-size") ?? "10000", "vault-cache-size", max: 10_000_000)
        config.cacheTTL = try duration(value("vault-cache-ttl") ?? "5m", "vault-cache-ttl", max: 86400)
        config.insecureAllowHTTP = insecure
        return config
    }

    private init(address: String, endpoint: Endpoint, keyName: String, auth: VaultAuthMethod, tls: TLSSettings) {
        self.address = address; self.endpoint = endpoint; self.keyName = keyName; self.auth = auth; self.tls = tls
    }

    /// "500ms", "2s", "1.5s", "10m", "24h", or plain seconds.
    public static func duration(_ text: String, _ name: String, max: Double) throws(KMSError) -> Double {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var number = text
        var scale = 1.0
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            number = String(text.dropLast(suffix.count)); scale = factor; break
        }
        guard let n = Double(number), n.isFinite, n > 0, n * scale <= max else {
            throw KMSError(.invalidArgument, "--\(name): \(text) is not a duration in (0, \(Int(max))s] (e.g. 500ms, 2s, 30s)")
        }
        return n * scale
    }

    private static func count(_ text: String, _ name: String, max: Int) throws(KMSError) -> Int {
        guard let n = HTTPResponseParser.parseDecimal(String(text.filter { $0 != "_" })), n > 0, n <= max else {
            throw KMSError(.invalidArgument, "--\(name): \(text) is not a whole number in 1...\(max)")
        }
        return n
    }

    private static func boolean(_ text: String, _ name: String) throws(KMSError) -> Bool {
        switch text.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: throw KMSError(.invalidArgument, "--\(name): expected true or false, got \(text)")
        }
    }

    private static func mountPath(_ text: String, _ name: String) throws(KMSError) -> String {
        let trimmed = text.hasSuffix("/") ? String(text.dropLast()) : text
        let ok = !trimmed.isEmpty && !trimmed.hasPrefix("/") && !trimmed.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == "." || $0 == ".." }
            && trimmed.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_./".contains($0)) })
        guard ok else { throw KMSError(.invalidArgument, "--\(name): \(text) is not a valid mount path") }
        return trimmed
    }
}
