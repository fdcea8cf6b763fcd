// `kekd serve`'s command line as a value: every flag validated before anything starts. Pure (arguments, environment
// and the caller's uid in, a configuration or a usage error out) so the contract of each flag is unit-tested.
import Audit
import CommandLineFlags
import Glibc
import Logging
import Server

/// Distinct exit codes so a crash-looping static pod tells the operator what is wrong.
enum StartupExit: Int32 {
    case usage = 2
    case keyFile = 3
    case socket = 4
    case audit = 5
    case vault = 6
    case fips = 7
    case health = 8
    case hsm = 9
}

/// Why kekd could not start, with the exit code that says so.
struct StartupError: Error {
    let exit: StartupExit
    let message: String
    init(_ exit: StartupExit, _ message: String) { self.exit = exit; self.message = message }
}

/// What `kekd serve ARGS` asks for.
enum ServeInvocation {
    case help
    case serve(DaemonConfiguration)
}

/// Everything kekd serve needs to know before it opens a file or a socket.
struct DaemonConfiguration {
    struct HealthAddress: Equatable { var host: String; var port: UInt16 }

    /// The audit log's settings; the chain key is resolved at start (it may need the backend or the state folder).
    struct AuditSettings {
        var path: String
        var mode: AuditMode
        var maxSize: Int
        var maxFiles: Int
        var hmacKeyFile: String?
        var newChain: Bool
    }

    /// The encrypting backend's kind and flags, and the decrypt-only ones.
    struct Backends {
        var encrypting: BackendKind
        var flags: [String: String]
        var decryptAlso: DecryptAlsoFlags
    }

    var dev: Bool
    var fips: Bool
    var logLevel: LogLevel
    var stateDir: String
    var server: ServerConfiguration
    var statusVersion: String
    var health: HealthAddress?
    var notifier: SystemdNotifier?
    var backends: Backends
    var audit: AuditSettings

    static let valueFlags = Set<String>(["listen", "socket-mode", "allowed-uids", "status-only-uids", "backend", "key-file",
        "state-dir", "status-version", "health-addr", "audit-log", "audit-mode", "audit-max-size", "audit-max-files",
        "audit-hmac-key-file", "max-message-size", "max-connections", "max-concurrent-streams", "max-header-list-size",
        "max-queued-output", "max-inflight-backend-calls", "preface-timeout", "idle-timeout", "shutdown-grace",
        "log-level", "max-buffered-request-bytes-per-connection", "max-buffered-request-bytes",
        "request-timeout", "spin-before-sleep-us"]).union(BackendKind.allFlagNames)
    static let switchFlags: Set<String> = ["dev", "fips", "help", "audit-new-chain"]

    /// `userID` is kekd's own uid (`--dev` admits it as a caller); `environment` supplies $NOTIFY_SOCKET.
    static func parse(_ arguments: [String], environment: [String: String], userID: UInt32) throws(UsageError) -> ServeInvocation {
        let flags = try Flags(arguments, valueFlags: valueFlags, switchFlags: switchFlags,
                              valuePrefixes: [DecryptAlsoFlags.prefix], allowsPositionals: false,
                              unknownFlagHint: " (see kekd serve --help)")
        if flags.has("help") { return .help }
        let decryptAlso = try DecryptAlsoFlags(flags.prefixed)
        let dev = flags.has("dev")

        guard let logLevel = LogLevel(name: flags.string("log-level", default: "info")) else {
            throw UsageError(message: "--log-level must be debug, info, warn or error")
        }

        let stateDir = flags.string("state-dir", default: dev ? "state" : "/var/lib/kekd")
        let socket = try socketPath(fromListen: flags.string("listen", default: dev ? "unix://\(stateDir)/kekd.sock" : "unix:///var/run/kmsplugin/socket.sock"))
        var server = ServerConfiguration(socketPath: socket)
        guard let mode = mode_t(flags.string("socket-mode", default: "0600"), radix: 8), mode <= 0o777 else {
            throw UsageError(message: "--socket-mode must be octal permissions like 0600")
        }
        server.socketMode = mode
        if let uids = try flags.uidList("allowed-uids") {
            server.allowedUIDs = uids
        } else if dev {
            // A developer runs kekd and kekctl as themselves; in production kekd's own uid is no caller.
            server.allowedUIDs.insert(userID)
        }
        if let uids = try flags.uidList("status-only-uids") { server.statusOnlyUIDs = uids }
        server.grpc.maxReceiveMessageSize = try flags.int("max-message-size", default: 4 << 20, min: 1024)
        server.grpc.http2.maxConcurrentStreams = try flags.int("max-concurrent-streams", default: 128, min: 1)
        server.grpc.http2.maxHeaderListSize = try flags.int("max-header-list-size", default: 16 << 10, min: 1024)
        // Both buffer caps must fit one message of the largest size (plus its 5-byte prefix), or it could never arrive.
        let oneMessage = server.grpc.maxReceiveMessageSize + 5
        server.grpc.maxBufferedRequestBytesPerConnection = try flags.int(
            "max-buffered-request-bytes-per-connection", default: min(4 * server.grpc.maxReceiveMessageSize, 1 << 30),
            min: oneMessage)
        guard server.grpc.maxBufferedRequestBytesPerConnection <= 1 << 30 else {
            throw UsageError(message: "--max-buffered-request-bytes-per-connection: at most 1Gi")
        }
        // Answers are about as large as the requests a connection may have in flight (an Encrypt's ciphertext is its
        // plaintext plus 28 bytes), so a client that pipelines up to the request cap before it reads must not be
        // failed for it: the default output cap holds those answers plus one more message.
        server.grpc.http2.maxQueuedOutputBytes = try flags.int(
            "max-queued-output", default: server.grpc.maxBufferedRequestBytesPerConnection + oneMessage, min: 64 << 10)
        server.maxBufferedRequestBytes = try flags.int(
            "max-buffered-request-bytes", default: max(32 << 20, server.grpc.maxBufferedRequestBytesPerConnection),
            min: oneMessage)
        let requestTimeout = try flags.seconds("request-timeout", default: 30)
        guard requestTimeout <= 86_400 else { throw UsageError(message: "--request-timeout: at most 24h") }
        server.grpc.requestTimeoutNanos = UInt64(requestTimeout * 1e9)
        server.maxConnections = try flags.int("max-connections", default: 64, min: 1)
        server.maxInFlightBackendCalls = try flags.int("max-inflight-backend-calls", default: 256, min: 1)
        server.prefaceTimeout = try flags.seconds("preface-timeout", default: 10)
        server.idleTimeout = try flags.seconds("idle-timeout", default: 600)
        server.shutdownGrace = try flags.seconds("shutdown-grace", default: 5)
        let spinMicros = try flags.int("spin-before-sleep-us", default: Int(server.spinBeforeSleepNanos / 1000))
        guard spinMicros <= 1000 else { throw UsageError(message: "--spin-before-sleep-us: at most 1000") }
        server.spinBeforeSleepNanos = UInt64(spinMicros) * 1000
        let statusVersion = flags.string("status-version", default: "v2")
        guard statusVersion == "v2" || statusVersion == "v2beta1" else { throw UsageError(message: "--status-version must be v2 or v2beta1") }
        let health = try parseHostPort(flags.string("health-addr", default: "127.0.0.1:8787"))

        let notifier: SystemdNotifier?
        do { notifier = try SystemdNotifier.fromEnvironment(environment) } catch { throw UsageError(message: "$NOTIFY_SOCKET: \(error)") }

        let kindName = flags.string("backend", default: "file")
        guard let kind = BackendKind.named(kindName) else {
            throw UsageError(message: "--backend must be one of \(BackendKind.names), got \(kindName)")
        }
        if decryptAlso.kinds.contains(where: { $0.name == kind.name }) {
            throw UsageError(message: "--decrypt-also \(kind.name): \(kind.name) is already the encrypting backend (--backend)")
        }

        guard let auditMode = AuditMode(rawValue: flags.string("audit-mode", default: "best-effort")) else {
            throw UsageError(message: "--audit-mode must be best-effort or fail-closed")
        }
        let audit = AuditSettings(path: flags.string("audit-log", default: "\(stateDir)/audit.log"), mode: auditMode,
                                  maxSize: try flags.int("audit-max-size", default: 100 << 20, min: 4096),
                                  maxFiles: try flags.int("audit-max-files", default: 10, min: 1),
                                  hmacKeyFile: flags.value("audit-hmac-key-file"), newChain: flags.has("audit-new-chain"))
        server.auditBlocksCalls = auditMode == .failClosed

        return .serve(DaemonConfiguration(
            dev: dev, fips: flags.has("fips"), logLevel: logLevel, stateDir: stateDir, server: server,
            statusVersion: statusVersion, health: health, notifier: notifier,
            backends: Backends(encrypting: kind, flags: flags.values.filter { kind.flagNames.contains($0.key) }, decryptAlso: decryptAlso),
            audit: audit))
    }
}

/// `unix:///path`, `unix://relative/path`, or a bare path.
func socketPath(fromListen listen: String) throws(UsageError) -> String {
    var path = listen
    if path.hasPrefix("unix://") { path = String(path.dropFirst("unix://".count)) }
    else if path.contains("://") { throw UsageError(message: "--listen must be unix:///path or a path, got \(listen)") }
    guard !path.isEmpty else { throw UsageError(message: "--listen needs a socket path") }
    return path
}

/// "127.0.0.1:8787", "[::1]:8787", or "off" (nil).
func parseHostPort(_ raw: String) throws(UsageError) -> DaemonConfiguration.HealthAddress? {
    if raw == "off" || raw.isEmpty { return nil }
    guard let colon = raw.lastIndex(of: ":"), let port = UInt16(raw[raw.index(after: colon)...]) else {
        throw UsageError(message: "--health-addr must be HOST:PORT or off, got \(raw)")
    }
    var host = String(raw[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return DaemonConfiguration.HealthAddress(host: host, port: port)
}

let serveHelp = """
usage: kekd serve [flags]

  --dev                        development mode: everything under ./state (key file created if missing)
  --listen ADDR                unix:///var/run/kmsplugin/socket.sock (a bare path works too)
  --socket-mode MODE           octal permissions of the socket file (default 0600)
  --allowed-uids LIST          peer uids allowed to connect, comma-separated (default: 0; --dev: 0 and your uid)
  --status-only-uids LIST      peer uids that may call Status only, e.g. an exec probe (default: kekd's own uid)
  --backend file|vault|pkcs11  key backend that encrypts (default file)
  --decrypt-also KIND          also decrypt with a KIND backend (file, vault, pkcs11), never encrypt with it;
                               repeatable, one per kind; its flags take the prefix decrypt-also-:
                               --decrypt-also-key-file PATH, --decrypt-also-vault-addr URL,
                               --decrypt-also-vault-token-file PATH, --decrypt-also-pkcs11-module PATH, ...
  --key-file PATH              local key file (default /etc/kekd/kek.json; --dev: ./state/kek.json)
  --state-dir DIR              folder for the audit log and usage data (default /var/lib/kekd; --dev: ./state)
  --status-version v2|v2beta1  version reported by Status (v2beta1 for kube-apiserver 1.27/1.28)
  --health-addr HOST:PORT|off  /livez /readyz /healthz /metrics (default 127.0.0.1:8787)
  --audit-log PATH|-           audit log file, or - for stdout (default STATE_DIR/audit.log)
  --audit-mode MODE            best-effort (default) or fail-closed
  --audit-max-size SIZE        rotate the audit file at this size (default 100Mi)
  --audit-max-files N          rotated audit files kept (default 10)
  --audit-hmac-key-file PATH   key for the audit chain (default: derived from the KEK)
  --audit-new-chain            accept a new audit chain when the existing log's chain key is missing or replaced
  --max-message-size SIZE      largest request message (default 4Mi)
  --max-connections N          concurrent client connections (default 64)
  --max-concurrent-streams N   concurrent streams per connection (default 128)
  --max-header-list-size SIZE  request header list limit (default 16Ki)
  --max-queued-output SIZE     response bytes a non-reading client may make us hold (default: the per-connection request cap + one message)
  --max-inflight-backend-calls N  calls waiting on a remote backend at once (default 256)
  --max-buffered-request-bytes-per-connection SIZE  request bytes one connection may make us hold (default 4 x max-message-size)
  --max-buffered-request-bytes SIZE  request bytes all connections together may make us hold (default 32Mi)
  --request-timeout DURATION   time a stream gets to send its whole request, 0 = never (default 30s)
  --preface-timeout DURATION   time allowed for the HTTP/2 preface (default 10s)
  --idle-timeout DURATION      close connections idle this long, 0 = never (default 10m)
  --shutdown-grace DURATION    time in-flight calls get on SIGTERM (default 5s)
  --spin-before-sleep-us N     a busy connection polls up to N µs before sleeping, adaptive, 0 = never (default 50)
  --log-level LEVEL            debug, info, warn, error (default info)
  --fips                       require OpenSSL's FIPS provider; refuse to start without it

Vault Transit backend (--backend vault); secrets are read from files only:
  --vault-addr URL             https://HOST:8200
  --vault-transit-mount PATH   Transit mount (default transit)
  --vault-key NAME             Transit key name
  --vault-namespace NS         sent as X-Vault-Namespace
  --vault-auth METHOD          token, approle or cert (default: inferred from the files given)
  --vault-token-file PATH      token auth
  --vault-approle-role-id-file PATH, --vault-approle-secret-id-file PATH, --vault-approle-mount PATH
  --vault-cert-auth-mount PATH, --vault-cert-auth-role NAME   TLS certificate auth (uses --vault-client-cert)
  --vault-ca-file PATH, --vault-client-cert PATH, --vault-client-key PATH, --vault-tls-server-name NAME
  --vault-connect-timeout D, --vault-request-timeout D, --vault-key-poll-interval D
  --vault-local-kek-max-encryptions N, --vault-local-kek-max-age D, --vault-cache-size N
  --vault-cache-ttl D          how long an unwrapped local KEK stays cached (default 5m)

\(pkcs11Help)

exit codes: 0 ok, 2 usage, 3 key file, 4 socket, 5 audit log, 6 Vault, 7 FIPS, 8 malformed --health-addr,
            9 PKCS#11 token (module, token, PIN or key not usable at start)
"""

