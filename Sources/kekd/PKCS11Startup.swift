// `--backend pkcs11` / `--decrypt-also pkcs11`: builds the backend from the `--pkcs11-*` flags and hooks its token state into metrics and
// /readyz. Kept apart from main.swift so the wiring stays one call there.
import CommandLineFlags
import FoundationEssentials
import Logging
import Metrics
import PKCS11
import Server

let pkcs11Help = """
PKCS#11 HSM backend (--backend pkcs11); the PIN is read from a file only:
  --pkcs11-module PATH         the vendor's PKCS#11 module (.so)
  --pkcs11-token-label L       the token, by label (or --pkcs11-slot N)
  --pkcs11-pin-file PATH       user PIN; re-read when it changes
  --pkcs11-key-label L         key family: objects L-v1, L-v2, ... (kekctl pkcs11 init|rotate|list|retire)
  --pkcs11-poll-interval D     rescan the token for a new key version this often (default 30s)
"""

extension BackendKind {
    static let pkcs11 = BackendKind(name: "pkcs11", flagNames: PKCS11Configuration.flagNames.sorted()) { flags, role, context throws(StartupError) in
        do throws(StartupError) { return try makePKCS11Backend(flags, stateDir: context.stateDir, metrics: context.metrics, log: context.logger) } catch {
            throw StartupError(error.exit, (role == .decryptOnly ? "decrypt-only " : "") + error.message)
        }
    }
}

/// The backend, connected and with its first local KEK, or exit code 9 with the token's one-line reason.
func makePKCS11Backend(_ flags: [String: String], stateDir: String, metrics: KekdMetrics, log: Logger) throws(StartupError) -> PKCS11KeyBackend {
    do {
        var configuration = try PKCS11Configuration.parse(flags, seconds: parseDuration)
        configuration.issuedKEKRecordPath = "\(stateDir)/pkcs11-keks.json"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let backend = try PKCS11KeyBackend(configuration: configuration,
                                           onBackendCall: { op, result, seconds in metrics.backendCall(op: op.rawValue, result: result, seconds: seconds) },
                                           onCache: { hit in metrics.cache(hit: hit) }, log: log)
        // Weak: the backend's hooks hold `metrics` (a strong capture would make a cycle).
        metrics.setPKCS11ProblemProvider { [weak backend] in backend?.tokenProblem?.name }
        return backend
    } catch let error as PKCS11Error {
        throw StartupError(.usage, "pkcs11 backend: \(error.message)")
    } catch {
        throw StartupError(.hsm, "\(error)")
    }
}

/// `/readyz` check `pkcs11`: the token answers (cached local KEKs keep working while it does not).
func pkcs11ReadinessCheck(_ backend: PKCS11KeyBackend) -> ReadinessCheck {
    ReadinessCheck(name: "pkcs11") { [weak backend] in
        guard let problem = backend?.tokenProblem else { return (true, "token answers") }
        return (false, "token unusable, uncached Decrypts fail: \(problem.message)")
    }
}
