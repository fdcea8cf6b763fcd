// `kekctl rotate-cluster`: parses flags and assembles the Rotation state machine with the real cluster (Kubernetes
// API), key backend (key file or Vault), this node's kekd and a verifier. The phases themselves live in Rotation.
import CommandLineFlags
import Etcd
import FoundationEssentials
import Glibc
import HTTPClient
import JSON
import KMSProto
import KMSRPC
import Kubernetes
import Locking
import Rotation
import Synchronization
import Vault

/// Set by SIGINT/SIGTERM: the run saves its state and stops at the next step. A second Ctrl-C kills at once.
private let interruptRequested = Atomic<Bool>(false)

enum RotateClusterCommand {
    static let help = """
        usage: kekctl rotate-cluster --provider NAME [--kubeconfig F] [--context NAME] [--apiservers URL,...]
                 (--key-file F [--sync-command 'CMD {file}' | --shared-key-file] | --backend vault --vault-... )
                 [--resources secrets] [--settle 5m] [--converge-timeout 10m] [--qps 50] [--concurrency 4]
                 [--etcd-endpoint URL --etcd-cacert F --etcd-cert F --etcd-key F] [--state-file F]
                 [--skip-rotate --new-key-id ID] [--socket PATH] [--poll-interval 2s] [--retire] [--dry-run]
                 [--output text|json]

        Rotates the KMS key of a whole control plane and proves the result. Phases, each printed as it starts and
        ends, each resumable from --state-file (default ./kekctl-rotation.json, mode 0600) after Ctrl-C, a crash or
        a reboot: run the same command again.
          preflight  kubeconfig credentials work; every apiserver (the `kubernetes` EndpointSlices in default, or
                     --apiservers) is ready (/readyz/kms-providers) and reports, in its metric
                     apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds for --provider, the key
                     this node's kekd (--socket, default /var/run/kmsplugin/socket.sock) reports. Refuses otherwise.
          rotate     file backend: stage a new version, run --sync-command once per change (or --shared-key-file
                     when every node reads the same file, or confirm on a terminal after copying), then promote.
                     Vault (--backend vault, kekd's --vault-* flags, an operator token file allowed to rotate):
                     transit/keys/NAME/rotate. --skip-rotate --new-key-id ID: rotated elsewhere.
          converge   every apiserver reports the new key 3 times in a row (--converge-timeout); lagging ones named.
          settle     wait --settle so every apiserver's previous write seed expires.
          migrate    list each resource in pages (limit 500 + continue) and PUT every object back unchanged, so the
                     apiservers rewrite the stale ones (--qps, --concurrency); a checkpoint after every page.
          verify     `kekctl census --require-key-id NEW` when --etcd-endpoint is given, else the apiservers'
                     metrics (the weaker proof, said so).
          retire     with --retire: retire the old file version / raise Vault's min_decryption_version.
        --dry-run runs preflight and shows what each phase would do and how many objects it would touch.
        --output json prints one JSON event a line. Exit codes: 0 done, 1 a phase failed or was interrupted (the
        message says which; run the same command to resume), 2 usage, 3 refused by preflight.
        """

    static let exitRefused: Int32 = 3

    static func run(_ argv: [String]) -> Int32 {
        runCommand(argv, help: help) { argv in
            let valueFlags: Set<String> = ["provider", "kubeconfig", "context", "apiservers", "key-file", "sync-command", "backend",
                                           "resources", "settle", "converge-timeout", "qps", "concurrency", "etcd-endpoint",
                                           "etcd-cacert", "etcd-cert", "etcd-key", "state-file", "new-key-id", "socket", "output",
                                           "poll-interval"]
            let args = try Flags(argv, valueFlags: valueFlags.union(VaultConfiguration.flagNames),
                                 switchFlags: ["retire", "dry-run", "skip-rotate", "shared-key-file"], allowsPositionals: false)
            let json: Bool
            switch args.value("output") ?? "text" {
            case "text": json = false
            case "json": json = true
            default: throw UsageError(message: "--output must be text or json")
            }
            var options = RotationOptions(provider: try args.required("provider"))
            options.resources = (args.value("resources") ?? "secrets").split(separator: ",").map { String($0) }
            for resource in options.resources {
                do { _ = try ResourceKind(resource) } catch let error as RotationError { throw UsageError(message: error.message) }
            }
            options.settleSeconds = try KeyCommands.parseDuration(args.value("settle") ?? "5m")
            options.convergeTimeout = try KeyCommands.parseDuration(args.value("converge-timeout") ?? "10m")
            options.pollInterval = try KeyCommands.parseDuration(args.value("poll-interval") ?? "2s")
            guard let qps = Double(args.value("qps") ?? "50"), qps > 0, qps <= 10_000 else { throw UsageError(message: "--qps takes a number in (0, 10000]") }
            guard let concurrency = Int(args.value("concurrency") ?? "4"), (1...64).contains(concurrency) else {
                throw UsageError(message: "--concurrency takes 1 to 64")
            }
            options.qps = qps
            options.concurrency = concurrency
            options.retire = args.has("retire")
            options.dryRun = args.has("dry-run")
            if args.has("skip-rotate") {
                options.skipRotateNewKeyID = try args.required("new-key-id")
            } else if args.value("new-key-id") != nil {
                throw UsageError(message: "--new-key-id goes with --skip-rotate")
            }
            let rotator = try makeRotator(args, skipRotate: args.has("skip-rotate"))
            let statePath = args.value("state-file") ?? RotationStateFile.defaultPath

            let printer = EventPrinter(json: json)
            let warn = { (line: String) in printer.print(RotationEvent(phase: .preflight, kind: .warning, message: line)) }

            // The state file decides where to start; its resources and provider must be this command's.
            var state = RotationState(provider: options.provider, backend: rotator?.backend ?? "external", resources: options.resources)
            if !options.dryRun, let saved = try loadState(statePath) {
                guard saved.provider == options.provider, saved.resources == options.resources else {
                    throw UsageError(message: "state file \(statePath) is for --provider \(saved.provider) --resources "
                                     + "\(saved.resources.joined(separator: ",")); run with those, or use another --state-file")
                }
                state = saved
                if state.phase != .done {
                    printer.print(RotationEvent(phase: state.phase, kind: .info, message: "resuming from \(statePath) at phase \(state.phase.rawValue)"))
                }
            }

            let kubeconfig: Kubeconfig
            let client: KubernetesClient
            do {
                let paths = try Kubeconfig.locate(flag: args.value("kubeconfig"), environment: Subprocess.currentEnvironment(),
                                                  exists: { FileManager.default.fileExists(atPath: $0) })
                kubeconfig = try Kubeconfig.load(paths: paths)
                client = try KubernetesClient.fromKubeconfig(kubeconfig, context: args.value("context"), warn: warn)
            } catch {
                printError("\(error)")
                return state.phase == .preflight ? exitRefused : ExitCode.failure
            }
            let apiservers = args.value("apiservers").map { $0.split(separator: ",").map(String.init) }
            let fleet = KubernetesFleet(client: client, apiservers: apiservers)
            var verifier: MigrationVerifier = MetricsVerifier(fleet: fleet, provider: options.provider)
            if let etcd = args.value("etcd-endpoint") {
                verifier = try etcdVerifier(args, endpoint: etcd, fallback: verifier)
            }

            installInterruptHandlers()
            let runner = RotationRunner(
                options: options, state: state, fleet: fleet, store: fleet, rotator: rotator,
                plugin: KekdProbe(socket: ProbeCommands.socketPath(args)), verifier: verifier, clock: SystemClock(),
                save: { (state: RotationState) throws(RotationError) in try RotationStateFile.save(state, path: statePath) },
                emit: printer.print)
            let outcome = runner.run()
            printer.finish()
            switch outcome {
            case .done:
                return ExitCode.ok
            case .refused(let message):
                printError("refused by preflight: \(message)")
                return exitRefused
            case .failed(let phase, let message):
                printError("phase \(phase.rawValue) failed: \(message)")
                printError("the state is saved in \(statePath); fix the cause and run the same command to resume")
                return ExitCode.failure
            case .interrupted(let phase):
                printError("interrupted in phase \(phase.rawValue); the state is saved in \(statePath); run the same command to resume")
                return ExitCode.failure
            }
        }
    }

    private static func loadState(_ path: String) throws -> RotationState? {
        do { return try RotationStateFile.load(path: path) } catch { throw UsageError(message: error.message + " (remove it to start afresh)") }
    }

    private static func makeRotator(_ args: Flags, skipRotate: Bool) throws -> KeyRotator? {
        let backend = args.value("backend") ?? (args.value("key-file") != nil ? "file" : (skipRotate ? "none" : "file"))
        switch backend {
        case "file":
            guard let keyFile = args.value("key-file") else { throw UsageError(message: "--key-file is required with the file backend") }
            let distribution: FileKeyRotator.Distribution
            switch (args.value("sync-command"), args.has("shared-key-file")) {
            case (let command?, false):
                guard command.contains("{file}") else { throw UsageError(message: "--sync-command must contain {file}") }
                distribution = .command(command)
            case (nil, true): distribution = .shared
            case (nil, false):
                guard isatty(0) == 1 else {
                    throw UsageError(message: "give --sync-command 'CMD {file}' or --shared-key-file (or run on a terminal to confirm each copy)")
                }
                distribution = .manual(confirm: {
                    writeStandardError("press Enter once the file is on every node (Ctrl-D to stop): ")
                    var byte: UInt8 = 0
                    while read(0, &byte, 1) == 1 { if byte == 0x0a { return true } }
                    return false
                })
            case (.some, true): throw UsageError(message: "--sync-command and --shared-key-file exclude each other")
            }
            return FileKeyRotator(keyFile: keyFile, distribution: distribution)
        case "vault":
            let flags = args.values.filter { VaultConfiguration.flagNames.contains($0.key) }
            do {
                return VaultKeyRotator(admin: try TransitAdmin(configuration: try VaultConfiguration.parse(flags)))
            } catch {
                throw UsageError(message: error.message)
            }
        case "none":
            return nil
        default:
            throw UsageError(message: "--backend must be file or vault")
        }
    }

    /// The census verifier over etcd's client certificate (kubeadm's healthcheck-client by default), with the
    /// apiservers' metrics as the fallback when etcd does not answer at all.
    private static func etcdVerifier(_ args: Flags, endpoint: String, fallback: MigrationVerifier) throws -> MigrationVerifier {
        let url: Endpoint
        do throws(AddressError) { url = try Endpoint(url: endpoint, what: "--etcd-endpoint") } catch { throw UsageError(message: error.message) }
        let tls = try CensusCommand.tlsSettings(args, secure: url.secure)
        do throws(EtcdError) {
            return CensusVerifier(client: try EtcdClient(endpoint: url, tls: tls), fallback: fallback)
        } catch {
            throw UsageError(message: "--etcd-endpoint: \(error.message)")
        }
    }

    private static func installInterruptHandlers() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig) { _ in
                if interruptRequested.exchange(true, ordering: .relaxed) { _exit(130) }
            }
        }
    }
}

struct SystemClock: RotationClock {
    func now() -> Double { Date().timeIntervalSince1970 }
    func sleep(_ seconds: Double) {
        // In slices, so Ctrl-C is seen within a fraction of a second even in a long wait.
        var left = seconds
        while left > 0, !interrupted() {
            Locking.sleep(seconds: min(left, 0.2))
            left -= 0.2
        }
    }
    func interrupted() -> Bool { interruptRequested.load(ordering: .relaxed) }
}

/// This node's kekd over its unix socket: the key_id its Status reports.
struct KekdProbe: PluginProbe {
    let socket: String
    func keyID() throws(RotationError) -> String {
        do {
            let client = try KMSClient(socketPath: socket, ioTimeoutSeconds: 5)
            let status = try client.status(timeoutNanos: 5_000_000_000)
                .mapError { RotationError("kekd Status failed: \($0)") }.get()
            guard status.healthz == "ok", !status.keyID.isEmpty else { throw RotationError("kekd at \(socket) is not healthy: \(status.healthz)") }
            return status.keyID
        } catch let error as RotationError {
            throw error
        } catch {
            throw RotationError("kekd at \(socket): \(error)")
        }
    }
}

/// Prints events as text lines (a progress line redrawn in place on a terminal, else one every few seconds) or as
/// one JSON object a line.
final class EventPrinter: Sendable {
    let json: Bool
    let terminal: Bool
    private let progress = LockedValue<(open: Bool, last: Double)>((false, 0))

    init(json: Bool) {
        self.json = json
        terminal = isatty(1) == 1
    }

    func print(_ event: RotationEvent) {
        if json {
            writeStandardOutput(event.json().serialized() + [0x0a])
            return
        }
        let line = "[\(event.phase.rawValue)] " + (event.kind == .warning ? "warning: " : "") + event.message
        progress.withLock { state in
            if event.kind == .progress && event.phase == .migrate {
                if terminal {
                    writeStandardOutput("\r\u{1B}[2K" + line)
                    state.open = true
                    return
                }
                let now = Date().timeIntervalSince1970
                guard now - state.last >= 3 else { return }
                state.last = now
            }
            if state.open { writeStandardOutput("\n"); state.open = false }
            writeStandardOutput(line + "\n")
        }
    }

    func finish() {
        progress.withLock { state in
            if state.open { writeStandardOutput("\n"); state.open = false }
        }
    }
}
