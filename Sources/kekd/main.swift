// kekd: the Kubernetes KMS v2 plugin daemon. Parses flags, wires the layers, handles signals. Nothing else.
import Audit
import Crypto
import FoundationEssentials
import Glibc
import KMS
import Locking
import Metrics
import PKCS11
import Server
import Vault

let kekdVersion = BuildInfo.version

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
  --max-queued-output SIZE     response bytes a non-reading client may make us hold (default 4Mi)
  --max-inflight-backend-calls N  calls waiting on a remote backend at once (default 256)
  --max-buffered-request-bytes-per-connection SIZE  request bytes one connection may make us hold (default 4 x max-message-size)
  --max-buffered-request-bytes SIZE  request bytes all connections together may make us hold (default 32Mi)
  --request-timeout DURATION   time a stream gets to send its whole request, 0 = never (default 30s)
  --preface-timeout DURATION   time allowed for the HTTP/2 preface (default 10s)
  --idle-timeout DURATION      close connections idle this long, 0 = never (default 10m)
  --shutdown-grace DURATION    time in-flight calls get on SIGTERM (default 5s)
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

func runServe(_ args: [String]) throws(StartupError) -> Int32 {
    let valueFlags = Set<String>(["listen", "socket-mode", "allowed-uids", "status-only-uids", "backend", "key-file", "state-dir",
        "status-version", "health-addr", "audit-log", "audit-mode", "audit-max-size", "audit-max-files",
        "audit-hmac-key-file", "max-message-size", "max-connections", "max-concurrent-streams", "max-header-list-size",
        "max-queued-output", "max-inflight-backend-calls", "preface-timeout", "idle-timeout", "shutdown-grace",
        "log-level", "max-buffered-request-bytes-per-connection", "max-buffered-request-bytes",
        "request-timeout"]).union(BackendKind.allFlagNames)
    let (otherArgs, decryptAlso) = try DecryptAlsoFlags.extract(args)
    let flags = try FlagSet(otherArgs, valueFlags: valueFlags, switchFlags: ["dev", "fips", "help", "audit-new-chain"])
    if flags.switches.contains("help") { print(serveHelp); return 0 }
    let dev = flags.switches.contains("dev")

    guard let level = LogLevel(name: flags.string("log-level", default: "info")) else {
        throw StartupError(.usage, "--log-level must be debug, info, warn or error")
    }
    let logger = Logger(minimumLevel: level)

    if flags.switches.contains("fips") {
        do { try FIPSMode.enable() } catch {
            throw StartupError(.fips, "--fips: OpenSSL FIPS provider unavailable (\(error)); refusing to start")
        }
    }

    let stateDir = flags.string("state-dir", default: dev ? "state" : "/var/lib/kekd")
    let socket = try socketPath(fromListen: flags.string("listen", default: dev ? "unix://\(stateDir)/kekd.sock" : "unix:///var/run/kmsplugin/socket.sock"))
    var server = ServerConfiguration(socketPath: socket)
    guard let mode = mode_t(flags.string("socket-mode", default: "0600"), radix: 8), mode <= 0o777 else {
        throw StartupError(.usage, "--socket-mode must be octal permissions like 0600")
    }
    server.socketMode = mode
    if let uids = try flags.uidList("allowed-uids") {
        server.allowedUIDs = uids
    } else if dev {
        // A developer runs kekd and kekctl as themselves; in production kekd's own uid is no caller.
        server.allowedUIDs.insert(getuid())
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
        throw StartupError(.usage, "--max-buffered-request-bytes-per-connection: at most 1Gi")
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
    guard requestTimeout <= 86_400 else { throw StartupError(.usage, "--request-timeout: at most 24h") }
    server.grpc.requestTimeoutNanos = UInt64(requestTimeout * 1e9)
    server.maxConnections = try flags.int("max-connections", default: 64, min: 1)
    server.maxInFlightBackendCalls = try flags.int("max-inflight-backend-calls", default: 256, min: 1)
    server.prefaceTimeout = try flags.seconds("preface-timeout", default: 10)
    server.idleTimeout = try flags.seconds("idle-timeout", default: 600)
    server.shutdownGrace = try flags.seconds("shutdown-grace", default: 5)
    let statusVersion = flags.string("status-version", default: "v2")
    guard statusVersion == "v2" || statusVersion == "v2beta1" else { throw StartupError(.usage, "--status-version must be v2 or v2beta1") }
    let health = try parseHostPort(flags.string("health-addr", default: "127.0.0.1:8787"))

    let notifier: SystemdNotifier?
    do { notifier = try SystemdNotifier.fromEnvironment() } catch { throw StartupError(.usage, "$NOTIFY_SOCKET: \(error)") }

    // The code run so far (the loader, the runtime's start, flag parsing) runs once: out of the resident set before
    // the backends' set-up (TLS, X.509, Vault login, PKCS#11 module) faults in its own, so the two do not add up in
    // kekd's peak.
    if let reason = StartupMemory.releaseCodePages() { logger.warn("start-up code stays resident", ["reason": reason]) }
    // Key backend; metrics exist first so the backend can report its calls.
    let backendName = flags.string("backend", default: "file")
    let metrics = KekdMetrics(version: kekdVersion, backend: backendName)
    let backend = try buildBackends(encrypting: backendName, flags: flags.values, decryptAlso: decryptAlso,
                                    context: BackendContext(dev: dev, stateDir: stateDir, logger: logger, metrics: metrics))

    // The audit log observes the service.
    let audit: AuditLog
    do {
        let path = flags.string("audit-log", default: "\(stateDir)/audit.log")
        guard let auditMode = AuditMode(rawValue: flags.string("audit-mode", default: "best-effort")) else {
            throw StartupError(.usage, "--audit-mode must be best-effort or fail-closed")
        }
        var hmacKey: [UInt8]
        let newChain = flags.switches.contains("audit-new-chain")
        if let keyPath = flags.values["audit-hmac-key-file"] {
            hmacKey = try AuditChainKey.load(keyPath: keyPath, auditLog: path, createWhenFresh: false, newChain: newChain, logger: logger)
        } else if let derived = backend.auditHMACKey() {
            hmacKey = derived
        } else {
            // The Vault backend has no local secret to derive from: keep a random chain key in the state folder.
            try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            hmacKey = try AuditChainKey.load(keyPath: "\(stateDir)/audit-hmac.key", auditLog: path, createWhenFresh: true,
                                             newChain: newChain, logger: logger)
        }
        if path != "-" {
            let folder = parentFolder(of: path)
            if folder != "." { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
        }
        // kekctl list/retire read it with --state-dir (the same folder) or --usage-file.
        let usagePath = "\(stateDir)/usage.json"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let configuration = AuditConfiguration(path: path, maxSize: Int64(try flags.int("audit-max-size", default: 100 << 20, min: 4096)),
                                               maxFiles: try flags.int("audit-max-files", default: 10, min: 1), mode: auditMode,
                                               // 2,048 records (~0.1 s at full load; 1.7 MiB with the batch being written):
                                               // a full queue is resident memory, and kube-apiserver's bursts are far smaller
                                               hmacKey: hmacKey, queueCapacity: 2048, usageFilePath: usagePath,
                                               // fail-closed: give up on a stuck sink before kube-apiserver's 3 s deadline
                                               failClosedTimeout: 2.5, allowNewChain: newChain)
        wipe(&hmacKey)
        audit = try AuditLog(configuration: configuration)
        server.auditBlocksCalls = auditMode == .failClosed
    } catch let error as StartupError {
        throw error
    } catch {
        throw StartupError(.audit, "audit log: \(error)")
    }
    metrics.setAuditStatsProvider {
        let s = audit.stats
        return AuditFigures(written: s.written, dropped: s.dropped, failed: s.failed, queueDepth: s.queueDepth,
                            queueCapacity: audit.configuration.queueCapacity)
    }
    metrics.setAuditChainHeadProvider { audit.chainHead }
    registerBackendMetrics(backend, metrics: metrics)

    let service = KMSService(backend: backend, statusVersion: statusVersion)
    let kmsServer = KMSServer(configuration: server, service: service, audit: audit, metrics: metrics, logger: logger)

    // The health endpoint listens before the socket does: whoever sees the socket (a probe, the interop suite)
    // can rely on /livez answering, and /readyz reports "socket" not ready until the server below starts.
    var healthServer: HealthServer?
    if let health {
        var checks = [
            ReadinessCheck(name: "socket") { (kmsServer.isListening, kmsServer.isListening ? "listening on \(socket)" : "not listening") },
            ReadinessCheck(name: "audit-log") { (audit.isWritable, audit.isWritable ? "writable" : "not writable") },
        ]
        checks.insert(contentsOf: backendReadinessChecks(backend), at: 1)
        let h = HealthServer(host: health.host, port: health.port, metrics: metrics, checks: checks,
                             limits: HealthServerLimits(), logger: logger)
        // A taken port must not keep kekd from serving (whoever binds it first would decide): the bind is
        // retried in the background. Only a malformed address stops kekd.
        do { try h.start(retryingBind: true) } catch {
            throw StartupError(.health, "--health-addr \(health.host):\(health.port): \(error)")
        }
        healthServer = h
    }
    do { try kmsServer.start() } catch {
        healthServer?.stop()
        throw StartupError(.socket, "socket \(socket): \(error)")
    }

    // systemd Type=notify: ready once the socket accepts; the watchdog only while the server still listens.
    notifier?.notify("READY=1")
    if let notifier, let interval = SystemdNotifier.watchdogInterval() { notifier.startWatchdog(interval: interval) { kmsServer.isListening } }

    let status = backend.status()
    metrics.setKeyID(status.keyID)
    logger.info("kekd started", ["version": kekdVersion, "backend": backend.name,
                                 "decrypt_also": backend.decryptOnly.map(\.name).joined(separator: ","), "key_id": status.keyID, "socket": socket,
                                 "health": health.map { "\($0.host):\($0.port)" } ?? "off", "audit_mode": audit.configuration.mode.rawValue])
    if let reason = StartupMemory.releaseCodePages() { logger.warn("start-up code stays resident", ["reason": reason]) }

    // Signals: SIGHUP reloads keys and reopens the audit file; SIGTERM/SIGINT drain and exit 0.
    while true {
        guard let signal = SignalWaiter.next(timeoutSeconds: 1) else {
            // The key file and Vault are followed in the background: keep kekd_key_info current.
            metrics.setKeyID(backend.status().keyID)
            continue
        }
        if signal == SIGHUP {
            logger.info("SIGHUP: reloading key material and reopening the audit log")
            backend.reload()
            audit.reopen()
            metrics.setKeyID(backend.status().keyID)
            continue
        }
        logger.info("shutting down", ["signal": Int(signal), "grace_seconds": server.shutdownGrace])
        notifier?.stopping()
        kmsServer.shutdown()
        healthServer?.stop()
        backend.close()
        audit.close()
        return 0
    }
}

/// Blocks the handled signals in every thread (call before any thread starts) and waits for them here.
enum SignalWaiter {
    static let handled: [Int32] = [SIGTERM, SIGINT, SIGHUP]
    static func blockAll() {
        signal(SIGPIPE, SIG_IGN)
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }
    /// The next handled signal, or nil when none arrived within the timeout.
    static func next(timeoutSeconds: Int) -> Int32? {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        var timeout = timespec(tv_sec: timeoutSeconds, tv_nsec: 0)
        let received = sigtimedwait(&set, nil, &timeout)
        return received > 0 ? received : nil
    }
}

SignalWaiter.blockAll()
// Before any key is read: a core dump or a same-uid debugger would otherwise see KEKs and tokens.
if let reason = ProcessHardening.disableCoreDumps() {
    writeStandardError("kekd: cannot disable core dumps: \(reason)\n")
}
let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "serve":
    do {
        exit(try runServe(Array(arguments.dropFirst())))
    } catch {
        writeStandardError("kekd: \(error.message)\n")
        exit(error.exit.rawValue)
    }
case "version", "--version":
    print("kekd \(kekdVersion)")
case "--help", "-h", "help":
    print("usage: kekd serve [flags]   (kekd serve --help)\n       kekd version")
default:
    writeStandardError("usage: kekd serve [flags]   (kekd serve --help)\n       kekd version\n")
    exit(StartupExit.usage.rawValue)
}
