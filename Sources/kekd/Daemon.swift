// kekd serve assembled from its configuration: backends, audit log, KMS server, health endpoint, systemd
// notification; then it waits for signals (SIGHUP reloads, SIGTERM/SIGINT drain and stop).
import Audit
import CommandLineFlags
import Crypto
import FoundationEssentials
import Glibc
import KMS
import Locking
import Logging
import Metrics
import Server

struct Daemon {
    let configuration: DaemonConfiguration
    let logger: Logger
    let metrics: KekdMetrics
    let backend: BackendSet
    let audit: AuditLog
    let kmsServer: KMSServer
    let healthServer: HealthServer?

    /// Opens everything in the order the contract needs (the health endpoint before the socket); a failure names
    /// its exit code.
    static func start(_ configuration: DaemonConfiguration) throws(StartupError) -> Daemon {
        let c = configuration
        let logger = Logger(minimumLevel: c.logLevel)
        if c.fips {
            do { try FIPSMode.enable() } catch {
                throw StartupError(.fips, "--fips: OpenSSL FIPS provider unavailable (\(error)); refusing to start")
            }
        }

        // The code run so far (the loader, the runtime's start, flag parsing) runs once: out of the resident set before
        // the backends' set-up (TLS, X.509, Vault login, PKCS#11 module) faults in its own, so the two do not add up in
        // kekd's peak.
        if let reason = StartupMemory.releaseCodePages() { logger.warn("start-up code stays resident", ["reason": reason]) }
        // Key backend; metrics exist first so the backend can report its calls.
        let metrics = KekdMetrics(version: BuildInfo.version, backend: c.backends.encrypting.name)
        let backend = try buildBackends(c.backends, context: BackendContext(dev: c.dev, stateDir: c.stateDir, logger: logger, metrics: metrics))

        // The audit log observes the service.
        let audit: AuditLog
        do {
            audit = try openAuditLog(c.audit, stateDir: c.stateDir, backend: backend, logger: logger)
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

        let service = KMSService(backend: backend, statusVersion: c.statusVersion)
        var serverConfiguration = c.server
        // A key file answers every call from memory; Vault and PKCS#11 say per call whether they would wait.
        serverConfiguration.execution = backend.members.allSatisfy { $0.backend is FileKeyBackend } ? .inline : .askBackend
        let kmsServer = KMSServer(configuration: serverConfiguration, service: service, audit: audit, metrics: metrics, logger: logger)
        let socket = c.server.socketPath

        // The health endpoint listens before the socket does: whoever sees the socket (a probe, the interop suite)
        // can rely on /livez answering, and /readyz reports "socket" not ready until the server below starts.
        var healthServer: HealthServer?
        if let health = c.health {
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
        if let notifier = c.notifier {
            notifier.notify("READY=1")
            if let interval = SystemdNotifier.watchdogInterval() { notifier.startWatchdog(interval: interval) { kmsServer.isListening } }
        }

        let status = backend.status()
        metrics.setKeyID(status.keyID)
        logger.info("kekd started", ["version": BuildInfo.version, "backend": backend.name,
                                     "decrypt_also": backend.decryptOnly.map(\.name).joined(separator: ","), "key_id": status.keyID,
                                     "socket": socket, "health": c.health.map { "\($0.host):\($0.port)" } ?? "off",
                                     "audit_mode": audit.configuration.mode.rawValue])
        if let reason = StartupMemory.releaseCodePages() { logger.warn("start-up code stays resident", ["reason": reason]) }
        return Daemon(configuration: c, logger: logger, metrics: metrics, backend: backend, audit: audit,
                      kmsServer: kmsServer, healthServer: healthServer)
    }

    /// The chain key (own file, derived from the backend, or kept in the state folder), folders, then the log.
    private static func openAuditLog(_ settings: DaemonConfiguration.AuditSettings, stateDir: String, backend: BackendSet,
                                     logger: Logger) throws -> AuditLog {
        let path = settings.path
        var hmacKey: [UInt8]
        if let keyPath = settings.hmacKeyFile {
            hmacKey = try AuditChainKey.load(keyPath: keyPath, auditLog: path, createWhenFresh: false, newChain: settings.newChain, logger: logger)
        } else if let file = backend.encrypting as? FileKeyBackend {
            // The chain follows the backend that writes; only a key file has a stable secret to derive its key from.
            hmacKey = file.auditHMACKey()
        } else {
            // Vault and PKCS#11 have no local secret to derive from: keep a random chain key in the state folder.
            try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            hmacKey = try AuditChainKey.load(keyPath: "\(stateDir)/audit-hmac.key", auditLog: path, createWhenFresh: true,
                                             newChain: settings.newChain, logger: logger)
        }
        if path != "-" {
            let folder = parentFolder(of: path)
            if folder != "." { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
        }
        // kekctl list/retire read it with --state-dir (the same folder) or --usage-file.
        let usagePath = "\(stateDir)/usage.json"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let configuration = AuditConfiguration(path: path, maxSize: Int64(settings.maxSize), maxFiles: settings.maxFiles,
                                               mode: settings.mode, // 2,048 records (~0.1 s at full load; 1.7 MiB with the batch being written):
                                               // a full queue is resident memory, and kube-apiserver's bursts are far smaller
                                               hmacKey: hmacKey, queueCapacity: 2048, usageFilePath: usagePath,
                                               // fail-closed: give up on a stuck sink before kube-apiserver's 3 s deadline
                                               failClosedTimeout: 2.5, allowNewChain: settings.newChain)
        wipe(&hmacKey)
        return try AuditLog(configuration: configuration, log: logger)
    }

    /// Serves until SIGTERM or SIGINT, then drains and closes everything; returns the exit code (0).
    func runUntilStopped() -> Int32 {
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
            logger.info("shutting down", ["signal": Int(signal), "grace_seconds": configuration.server.shutdownGrace])
            configuration.notifier?.stopping()
            kmsServer.shutdown()
            healthServer?.stop()
            backend.close()
            audit.close()
            return 0
        }
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

