// Building kekd's key backends from flags: the encrypting one (`--backend KIND` and that kind's flags) and any number
// of decrypt-only ones (`--decrypt-also KIND`, repeatable, with that kind's flags repeated under the `decrypt-also-`
// prefix: `--decrypt-also-key-file`, `--decrypt-also-vault-addr`, ...). A new kind is one entry in `BackendKind.all`.
import CommandLineFlags
import FoundationEssentials
import KMS
import Logging
import Metrics
import PKCS11
import Server
import Vault

/// What building a backend needs from the rest of kekd.
struct BackendContext {
    let dev: Bool
    let stateDir: String
    let logger: Logger
    let metrics: KekdMetrics
}

/// A kind of key backend: its name (`--backend NAME`, `--decrypt-also NAME`), its own flags (without `--`), and how
/// to build one from their values.
struct BackendKind: Sendable {
    typealias Build = @Sendable (_ flags: [String: String], _ role: BackendMember.Role, _ context: BackendContext) throws(StartupError) -> any KeyBackend
    let name: String
    let flagNames: [String]
    let build: Build

    static let all: [BackendKind] = [.file, .vault, .pkcs11]

    static func named(_ name: String) -> BackendKind? { all.first { $0.name == name } }
    static var names: String { all.map(\.name).joined(separator: ", ") }
    /// Every kind's flags, for `--backend` (unprefixed).
    static var allFlagNames: [String] { all.flatMap(\.flagNames) }

    static let file = BackendKind(name: "file", flagNames: ["key-file"]) { flags, role, context throws(StartupError) in
        let keyFile = flags["key-file"] ?? (context.dev ? "\(context.stateDir)/kek.json" : "/etc/kekd/kek.json")
        // --dev makes a key file to encrypt with; a decrypt-only one must already hold the keys of old data.
        if context.dev && role == .encrypt && !FileManager.default.fileExists(atPath: keyFile) {
            do {
                try FileManager.default.createDirectory(atPath: context.stateDir, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
                try FileKeyBackend.initializeKeyFile(path: keyFile)
            } catch { throw StartupError(.keyFile, "--dev: cannot create \(keyFile): \(error)") }
            context.logger.info("created development key file", ["path": keyFile])
        }
        do { return try FileKeyBackend(keyFilePath: keyFile, log: context.logger) } catch {
            throw StartupError(.keyFile, (role == .decryptOnly ? "decrypt-only file backend: " : "") + "\(error)")
        }
    }

    static let vault = BackendKind(name: "vault", flagNames: VaultConfiguration.flagNames) { flags, role, context throws(StartupError) in
        let metrics = context.metrics
        do {
            var configuration = try VaultConfiguration.parse(flags)
            configuration.decryptOnly = role == .decryptOnly
            configuration.issuedKEKRecordPath = "\(context.stateDir)/vault-keks.json"
            try FileManager.default.createDirectory(atPath: context.stateDir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            let vault = try VaultKeyBackend(configuration: configuration,
                                            onBackendCall: { op, result, seconds in metrics.backendCall(op: op.rawValue, result: result, seconds: seconds) },
                                            onCache: { hit in metrics.cache(hit: hit) }, log: context.logger)
            // Serve from the start with a key_id when Vault answers; otherwise keep retrying in the background
            // (Status fails until then, so kube-apiserver does not write with a key it cannot have).
            if !vault.waitUntilReady(timeout: 3) {
                context.logger.warn(role == .encrypt ? "Vault not ready yet; serving, Status fails until the first local KEK is wrapped"
                                    : "Vault not ready yet; serving, decrypts under Vault key_ids fail until the key is read",
                                    ["key": configuration.keyName])
            }
            // Weak: the backend's call hooks hold `metrics`, so a strong capture would make a cycle that outlives
            // serve (LeakSanitizer reports it at exit).
            metrics.setVaultStateProvider { [weak keyring = vault.keyring] in
                guard let t = keyring?.telemetry() else { return VaultFigures(circuitOpen: false, tokenExpiry: nil, tokenTTL: nil) }
                return VaultFigures(circuitOpen: t.circuitOpen, tokenExpiry: t.tokenExpiry, tokenTTL: t.tokenLease)
            }
            return vault
        } catch let error as StartupError {
            throw error
        } catch {
            throw StartupError(.vault, (role == .decryptOnly ? "decrypt-only " : "") + "vault backend: \(error)")
        }
    }
}

/// `--decrypt-also KIND` (repeatable) and `--decrypt-also-FLAG VALUE` for the flags of those kinds.
struct DecryptAlsoFlags {
    static let prefix = "decrypt-also"
    var kinds: [BackendKind] = []
    /// The prefixed flags' values, by the kind's own flag name (`key-file`, `vault-addr`, ...).
    var values: [String: String] = [:]

    /// From the prefixed flags in command-line order; an unknown kind, a kind named twice, or a
    /// `--decrypt-also-FLAG` that belongs to none of the named kinds is a usage error.
    init(_ occurrences: [(name: String, value: String)]) throws(UsageError) {
        let prefix = Self.prefix
        for (name, value) in occurrences {
            if name == prefix {
                guard let kind = BackendKind.named(value) else {
                    throw UsageError(message: "--decrypt-also must be one of \(BackendKind.names), got \(value)")
                }
                guard !kinds.contains(where: { $0.name == kind.name }) else {
                    throw UsageError(message: "--decrypt-also \(value) given twice")
                }
                kinds.append(kind)
            } else {
                let own = String(name.dropFirst(prefix.count + 1))
                guard values[own] == nil else { throw UsageError(message: "--\(name) given twice") }
                values[own] = value
            }
        }
        for own in values.keys.sorted() where !kinds.contains(where: { $0.flagNames.contains(own) }) {
            let owner = BackendKind.all.first { $0.flagNames.contains(own) }
            throw UsageError(message: owner.map { "--\(prefix)-\(own) needs --decrypt-also \($0.name)" }
                             ?? "unknown flag --\(prefix)-\(own) (see kekd serve --help)")
        }
    }
}

/// The encrypting backend and the decrypt-only ones, built and connected (kinds already validated by the parse).
func buildBackends(_ selection: DaemonConfiguration.Backends, context: BackendContext) throws(StartupError) -> BackendSet {
    let encrypting = try selection.encrypting.build(selection.flags, .encrypt, context)
    var decryptOnly: [any KeyBackend] = []
    for other in selection.decryptAlso.kinds {
        let values = selection.decryptAlso.values.filter { other.flagNames.contains($0.key) }
        do { decryptOnly.append(try other.build(values, .decryptOnly, context)) } catch {
            encrypting.close()
            for built in decryptOnly { built.close() }
            throw error
        }
    }
    do { return try BackendSet(encrypting: encrypting, decryptOnly: decryptOnly) } catch {
        throw StartupError(.usage, error.message)
    }
}

/// `/readyz` checks for the backends: `key-backend` (the encrypting one) and `key-backend-decrypt-only-KIND` for
/// each decrypt-only one, plus `key-file` when a file backend is configured and `pkcs11` for a PKCS#11 one.
func backendReadinessChecks(_ backends: BackendSet) -> [ReadinessCheck] {
    var checks: [ReadinessCheck] = []
    for member in backends.members {
        let backend = member.backend
        let name = member.role == .encrypt ? "key-backend" : "key-backend-decrypt-only-\(member.kind)"
        checks.append(ReadinessCheck(name: name) { let s = backend.status(); return (s.healthy, s.healthy ? "ok" : s.detail) })
    }
    for member in backends.members {
        if let hsm = member.backend as? PKCS11KeyBackend { checks.append(pkcs11ReadinessCheck(hsm)) }
    }
    if let file = backends.fileBackend {
        checks.append(ReadinessCheck(name: "key-file") {
            let valid = file.keyFileHealth.valid
            return (valid, valid ? "loaded" : "last change rejected, previous keys in use (see the log)")
        })
    }
    return checks
}

/// Metrics for the backends: `kekd_backend_up{backend,role}` and, with a file backend, the key file's state.
func registerBackendMetrics(_ backends: BackendSet, metrics: KekdMetrics) {
    // Weak: the Vault backend's call hooks hold `metrics` (a strong capture would be a cycle, see the Vault kind).
    metrics.setBackendsProvider { [weak backends] in
        (backends?.members ?? []).map { BackendFigures(backend: $0.kind, role: $0.role.rawValue, healthy: $0.backend.status().healthy) }
    }
    if let file = backends.fileBackend { metrics.setKeyFileHealthProvider { file.keyFileHealth } }
}

extension BackendSet {
    /// The file backend, encrypting or decrypt-only, if there is one.
    var fileBackend: FileKeyBackend? { members.lazy.compactMap { $0.backend as? FileKeyBackend }.first }
}
