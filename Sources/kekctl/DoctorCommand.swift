// `kekctl doctor`: the checklist an operator runs on a control-plane node when kube-apiserver reports
// `kms-providers failed`. Every host path is read under `--root`, so the checks run against fixture trees too.
import Audit
import Crypto
import FoundationEssentials
import Glibc
import KMS
import KMSProto
import KMSRPC
import CommandLineFlags
import YAML

enum DoctorCommand {
    static let help = """
        usage: kekctl doctor [--root DIR] [--socket PATH] [--socket-mode MODE] [--key-file F] [--state-dir DIR]
                             [--audit-log F] [--audit-hmac-key-file F] [--audit-records N] [--health-addr HOST:PORT]
                             [--kekd-uid UID] [--json]

        Checks kekd, kube-apiserver's static pod and EncryptionConfiguration, and the node; prints one line per
        check (ok / warn / fail, each fail with its fix) and exits 1 when any check fails, 0 otherwise, 2 on usage
        errors. --json prints the same as one object.

          --root DIR            prefix of every host path read (default /)
          --socket PATH         kekd's socket (default /var/run/kmsplugin/socket.sock)
          --socket-mode MODE    the socket's expected permissions, as kekd's --socket-mode (default 0600)
          --key-file F          the local key file (default /etc/kekd/kek.json)
          --state-dir DIR       kekd's state folder (default /var/lib/kekd)
          --audit-log F         the audit log (default STATE_DIR/audit.log)
          --audit-hmac-key-file F  the audit chain key when kekd was given one (default: derived from the key file)
          --audit-records N     how many of the newest audit records to verify (default 1000)
          --health-addr H:P     kekd's health endpoint (default 127.0.0.1:8787; off skips it)
          --kekd-uid UID        the uid kekd runs as, which must own its files (default 60917, the image's)

        Not checked: /readyz/kms-providers through a kubeconfig, and the provider name in etcd.
        """

    enum Status: String { case ok, warn, fail }

    struct Check {
        var name: String
        var status: Status
        var detail: String
        var fix: String?
    }

    struct Options {
        var root: String
        var socket: String
        var socketMode: mode_t
        var keyFile: String
        var stateDir: String
        var auditLog: String
        var auditHMACKeyFile: String?
        var auditRecords: Int
        var healthAddr: String
        var kekdUID: uid_t

        /// The path on this machine of a host path.
        func host(_ path: String) -> String {
            root == "/" ? path : (root.hasSuffix("/") ? String(root.dropLast()) : root) + (path.hasPrefix("/") ? path : "/" + path)
        }
    }

    static let manifestPath = "/etc/kubernetes/manifests/kube-apiserver.yaml"

    static func run(_ argv: [String]) -> Int32 {
        runCommand(argv, help: help) { argv in
            let args = try Flags(argv, valueFlags: ["root", "socket", "socket-mode", "key-file", "state-dir", "audit-log",
                                                    "audit-hmac-key-file", "audit-records", "health-addr", "kekd-uid"],
                                 switchFlags: ["json"])
            guard args.positionals.isEmpty else { throw UsageError(message: "doctor takes no arguments") }
            guard let mode = mode_t(args.value("socket-mode") ?? "0600", radix: 8), mode <= 0o777 else {
                throw UsageError(message: "--socket-mode must be octal permissions such as 0600")
            }
            guard let uid = uid_t(args.value("kekd-uid") ?? "60917") else { throw UsageError(message: "--kekd-uid must be a number") }
            guard let records = Int(args.value("audit-records") ?? "1000"), records > 0 else {
                throw UsageError(message: "--audit-records must be a positive number")
            }
            let stateDir = args.value("state-dir") ?? "/var/lib/kekd"
            let options = Options(root: args.value("root") ?? "/", socket: ProbeCommands.socketPath(args), socketMode: mode,
                                  keyFile: args.value("key-file") ?? "/etc/kekd/kek.json", stateDir: stateDir,
                                  auditLog: args.value("audit-log") ?? stateDir + "/audit.log",
                                  auditHMACKeyFile: args.value("audit-hmac-key-file"), auditRecords: records,
                                  healthAddr: args.value("health-addr") ?? "127.0.0.1:8787", kekdUID: uid)
            var doctor = Doctor(options: options)
            doctor.runAll()
            let failed = doctor.checks.contains { $0.status == .fail }
            if args.has("json") {
                print(doctor.json(ok: !failed))
            } else {
                print(doctor.text())
            }
            return failed ? ExitCode.failure : ExitCode.ok
        }
    }
}

struct Doctor {
    typealias Check = DoctorCommand.Check
    let options: DoctorCommand.Options
    var checks: [Check] = []
    private var keyFile: KeyFile?

    init(options: DoctorCommand.Options) { self.options = options }

    private mutating func add(_ name: String, _ status: DoctorCommand.Status, _ detail: String, fix: String? = nil) {
        checks.append(Check(name: name, status: status, detail: detail, fix: fix))
    }

    mutating func runAll() {
        checkSocket()
        checkStatus()
        checkHealth()
        checkKeyFile()
        checkAuditLog()
        checkStateDir()
        checkAPIServer()
        checkClock()
        checkDisk()
    }

    // MARK: kekd

    private mutating func checkSocket() {
        var st = stat()
        let path = options.host(options.socket)
        guard lstat(path, &st) == 0 else {
            add("socket", .fail, "\(options.socket) does not exist: kekd is not running or listens elsewhere",
                fix: "start kekd (crictl ps --name kekd; crictl logs <id>) and check its --listen")
            return
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            add("socket", .fail, "\(options.socket) is not a socket", fix: "remove it and restart kekd")
            return
        }
        let mode = st.st_mode & 0o777
        guard mode == options.socketMode else {
            add("socket", .fail, "\(options.socket) has mode \(octal(mode)), expected \(octal(options.socketMode))",
                fix: "restart kekd with --socket-mode \(octal(options.socketMode)) (or pass the mode in use to doctor)")
            return
        }
        add("socket", .ok, "\(options.socket) is a socket, mode \(octal(mode))")
    }

    private mutating func checkStatus() {
        do {
            let client = try KMSClient(socketPath: options.host(options.socket), ioTimeoutSeconds: 3)
            let status: StatusResponse
            switch try client.status() {
            case .success(let response): status = response
            case .failure(let failure):
                add("status", .fail, "Status failed: \(failure)", fix: "read kekd's log (crictl logs)")
                return
            }
            guard status.healthz == "ok" else {
                add("status", .fail, "Status healthz is \(status.healthz.debugDescription)", fix: "read kekd's log (crictl logs)")
                return
            }
            add("status", .ok, "version \(status.version), healthz ok, key_id \(status.keyID)")
            statusKeyID = status.keyID
        } catch {
            add("status", .fail, "no answer to Status on \(options.socket): \(error)",
                fix: "check that kekd is running and serving this socket")
        }
    }

    private var statusKeyID: String?

    private mutating func checkHealth() {
        guard options.healthAddr != "off" else {
            add("readyz", .warn, "--health-addr off: readiness not checked")
            return
        }
        switch HTTPProbe.get(address: options.healthAddr, path: "/readyz?verbose") {
        case .success(let (code, body)) where code == 200:
            add("readyz", .ok, "/readyz: " + (body.split(separator: "\n").last.map(String.init) ?? "ok"))
        case .success(let (code, body)):
            let failing = body.split(separator: "\n").filter { $0.contains("failed") }.joined(separator: "; ")
            add("readyz", .fail, "/readyz answered \(code): \(failing.isEmpty ? body : failing)",
                fix: "fix the failing readiness checks named above (kekd's log says why)")
        case .failure(let error):
            add("readyz", .fail, "\(options.healthAddr): \(error.description)", fix: "check kekd's --health-addr and that it is running")
        }
        switch HTTPProbe.get(address: options.healthAddr, path: "/metrics") {
        case .success(let (200, body)):
            guard let version = buildVersion(fromMetrics: body) else {
                add("version", .warn, "kekd_build_info is missing from /metrics")
                return
            }
            if version == BuildInfo.version {
                add("version", .ok, "kekd \(version), kekctl \(BuildInfo.version)")
            } else {
                add("version", .warn, "kekd \(version) but kekctl \(BuildInfo.version): use the kekctl of kekd's release")
            }
        default:
            add("version", .warn, "kekd's version is unknown: /metrics did not answer")
        }
    }

    private func buildVersion(fromMetrics text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix("kekd_build_info{") {
            guard let start = line.firstRange(of: "version=\"") else { continue }
            let rest = line[start.upperBound...]
            if let end = rest.firstIndex(of: "\"") { return String(rest[..<end]) }
        }
        return nil
    }

    private mutating func checkKeyFile() {
        let path = options.host(options.keyFile)
        var st = stat()
        guard lstat(path, &st) == 0 else {
            add("key-file", .fail, "\(options.keyFile) does not exist", fix: "kekctl init --key-file \(options.keyFile) (or restore it from backup)")
            return
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            add("key-file", .fail, "\(options.keyFile) is not a regular file", fix: "replace it with the key file itself")
            return
        }
        if st.st_uid != options.kekdUID {
            add("key-file", .fail, "\(options.keyFile) is owned by uid \(st.st_uid), kekd runs as \(options.kekdUID)",
                fix: "chown \(options.kekdUID) \(options.keyFile)")
            return
        }
        let mode = st.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            add("key-file", .fail, "\(options.keyFile) has mode \(octal(mode)): readable beyond its owner",
                fix: "chmod 600 \(options.keyFile)")
            return
        }
        do {
            let file = try KeyFileStore.load(path: path).file
            guard let primary = file.primary, file.versions.filter({ $0.state == .primary }).count == 1 else {
                add("key-file", .fail, "\(options.keyFile) has no single primary version", fix: "kekctl list --key-file \(options.keyFile)")
                return
            }
            keyFile = file
            let primaryID = file.keyID(forVersion: primary.version)
            add("key-file", .ok, "\(file.versions.count) version(s), primary \(primaryID), mode \(octal(mode)), uid \(st.st_uid)")
            if let reported = statusKeyID, reported != primaryID {
                add("key-id", .warn, "kekd reports key_id \(reported) but the key file's primary is \(primaryID): "
                    + "kekd has not picked the file up yet, or reads another file")
            }
        } catch {
            add("key-file", .fail, error.message, fix: "restore the key file from backup")
        }
    }

    private mutating func checkAuditLog() {
        guard options.auditLog != "-" else {
            add("audit-log", .warn, "the audit log goes to stdout: its chain cannot be checked here")
            return
        }
        let path = options.host(options.auditLog)
        var st = stat()
        guard lstat(path, &st) == 0 else {
            add("audit-log", .fail, "\(options.auditLog) does not exist", fix: "check kekd's --audit-log and --state-dir")
            return
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            add("audit-log", .fail, "\(options.auditLog) is not a regular file", fix: "move it away and restart kekd")
            return
        }
        guard st.st_uid == options.kekdUID, st.st_mode & 0o200 != 0 else {
            add("audit-log", .fail, "\(options.auditLog) is not writable by kekd (uid \(st.st_uid), mode \(octal(st.st_mode & 0o777)))",
                fix: "chown \(options.kekdUID) \(options.auditLog) && chmod 600 \(options.auditLog)")
            return
        }
        var key: [UInt8]
        do {
            if let file = options.auditHMACKeyFile {
                key = try AuditHMACKeyFile.load(path: options.host(file))
            } else if let keyFile {
                key = try keyFile.auditHMACKey()
            } else {
                add("audit-log", .warn, "\(options.auditLog) is writable; its chain is not checked without a loadable key file "
                    + "(or --audit-hmac-key-file)")
                return
            }
        } catch {
            add("audit-log", .warn, "\(options.auditLog) is writable; chain key unavailable: \(error)")
            return
        }
        defer { wipe(&key) }
        let report = AuditVerifier.verifyTail(path: path, hmacKey: key, records: options.auditRecords)
        if let problem = report.problem {
            add("audit-log", .fail, "audit chain broken: \(problem)",
                fix: "keep the file as evidence; kekctl audit verify \(options.auditLog) --key-file \(options.keyFile); investigate who wrote it")
        } else {
            add("audit-log", .ok, "writable; the last \(report.records) record(s) verify"
                + (report.lastSeq.map { " (up to seq \($0))" } ?? ""))
        }
    }

    private mutating func checkStateDir() {
        var st = stat()
        guard lstat(options.host(options.stateDir), &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            add("state-dir", .fail, "\(options.stateDir) is not a folder", fix: "mkdir -m 700 \(options.stateDir) && chown \(options.kekdUID) \(options.stateDir)")
            return
        }
        let mode = st.st_mode & 0o777
        if st.st_uid != options.kekdUID {
            add("state-dir", .fail, "\(options.stateDir) is owned by uid \(st.st_uid), kekd runs as \(options.kekdUID)",
                fix: "chown \(options.kekdUID) \(options.stateDir)")
        } else if mode & 0o022 != 0 {
            add("state-dir", .fail, "\(options.stateDir) has mode \(octal(mode)): others can replace kekd's files",
                fix: "chmod 700 \(options.stateDir)")
        } else {
            add("state-dir", .ok, "\(options.stateDir), mode \(octal(mode)), uid \(st.st_uid)")
        }
    }

    // MARK: kube-apiserver

    private struct HostPathMount {
        var mountPath: String
        var hostPath: String
    }

    /// The host path a container path maps to through the pod's hostPath mounts (nil when not mounted).
    private func hostPath(of containerPath: String, mounts: [HostPathMount]) -> String? {
        let best = mounts.filter { isPath(containerPath, under: $0.mountPath) }.max { $0.mountPath.count < $1.mountPath.count }
        guard let mount = best else { return nil }
        let rest = containerPath.dropFirst(trimmed(mount.mountPath).count)
        return trimmed(mount.hostPath) + rest
    }

    /// The YAML document at host path `path` (under --root); nil after failing `check` when it is missing,
    /// unreadable or outside the YAML subset.
    private mutating func loadYAML(check: String, path: String, missingFix: String, syntaxFix: String) -> YAMLValue? {
        guard let text = try? String(contentsOfFile: options.host(path), encoding: .utf8) else {
            add(check, .fail, "\(path) is missing or unreadable", fix: missingFix)
            return nil
        }
        do {
            return try YAML.parse(text)
        } catch {
            add(check, .fail, "\(path): \(error)", fix: syntaxFix)
            return nil
        }
    }

    private mutating func checkAPIServer() {
        let manifestPath = DoctorCommand.manifestPath
        guard let pod = loadYAML(check: "apiserver-manifest", path: manifestPath,
                                 missingFix: "run doctor on a control-plane node with a static-pod kube-apiserver (or pass --root)",
                                 syntaxFix: "fix the manifest's YAML") else { return }
        let containers = pod["spec"]?["containers"]?.sequence ?? []
        guard let container = containers.first(where: { $0["name"]?.string == "kube-apiserver" }) ?? containers.first else {
            add("apiserver-manifest", .fail, "\(manifestPath) has no container", fix: "restore kubeadm's manifest")
            return
        }
        let words = (container["command"]?.sequence ?? []).compactMap(\.string) + (container["args"]?.sequence ?? []).compactMap(\.string)
        var configPath: String?
        for (index, word) in words.enumerated() {
            if word.hasPrefix("--encryption-provider-config=") {
                configPath = String(word.dropFirst("--encryption-provider-config=".count))
            } else if word == "--encryption-provider-config", index + 1 < words.count {
                configPath = words[index + 1]
            }
        }
        guard let configPath, !configPath.isEmpty else {
            add("apiserver-manifest", .fail, "kube-apiserver has no --encryption-provider-config: Secrets are stored unencrypted",
                fix: "add --encryption-provider-config=/etc/kubernetes/enc/enc.yaml to \(manifestPath) (manifests/README.md)")
            return
        }
        add("apiserver-manifest", .ok, "--encryption-provider-config=\(configPath)")

        var volumes: [String: String] = [:]
        for volume in pod["spec"]?["volumes"]?.sequence ?? [] {
            if let name = volume["name"]?.string, let path = volume["hostPath"]?["path"]?.string { volumes[name] = path }
        }
        var mounts: [HostPathMount] = []
        for mount in container["volumeMounts"]?.sequence ?? [] {
            if let name = mount["name"]?.string, let path = mount["mountPath"]?.string, let host = volumes[name] {
                mounts.append(HostPathMount(mountPath: path, hostPath: host))
            }
        }
        let configHostPath = hostPath(of: configPath, mounts: mounts)
        let configFolder = folder(of: configPath)
        if configHostPath == nil {
            add("apiserver-mounts", .fail, "the EncryptionConfiguration's folder \(configFolder) is not a hostPath mount of kube-apiserver",
                fix: "add a hostPath volume for \(configFolder) and a volumeMount at \(configFolder) (readOnly) to \(manifestPath)")
        }
        checkEncryptionConfig(containerPath: configPath, hostPath: configHostPath ?? configPath, mounts: mounts,
                              configMounted: configHostPath != nil)
    }

    private mutating func checkEncryptionConfig(containerPath: String, hostPath: String, mounts: [HostPathMount], configMounted: Bool) {
        guard let config = loadYAML(check: "encryption-config", path: hostPath,
                                    missingFix: "write the EncryptionConfiguration (manifests/encryption-config.yaml) to \(hostPath)",
                                    syntaxFix: "fix the file's YAML") else { return }
        guard config["kind"]?.string == "EncryptionConfiguration", let resources = config["resources"]?.sequence else {
            add("encryption-config", .fail, "\(hostPath) is not an EncryptionConfiguration with resources",
                fix: "start from manifests/encryption-config.yaml")
            return
        }
        add("encryption-config", .ok, "\(hostPath) parses")

        var kms: [YAMLValue] = []
        var identityFirst: [String] = []
        for resource in resources {
            let providers = resource["providers"]?.sequence ?? []
            if let first = providers.first, first["identity"] != nil {
                identityFirst.append((resource["resources"]?.sequence ?? []).compactMap(\.string).joined(separator: ","))
            }
            kms += providers.compactMap { $0["kms"] }
        }
        guard !kms.isEmpty else {
            add("kms-provider", .fail, "no kms provider in \(hostPath)", fix: "add kekd as a kms apiVersion v2 provider (manifests/README.md)")
            return
        }
        let socketMounted = mounts.contains { isPath(options.socket, under: $0.hostPath) }
        let ours = kms.filter { provider in
            guard let endpoint = provider["endpoint"]?.string else { return false }
            var path = endpoint.hasPrefix("unix://") ? String(endpoint.dropFirst("unix://".count)) : endpoint
            if let host = self.hostPath(of: path, mounts: mounts) { path = host }
            return trimmed(path) == trimmed(options.socket)
        }
        guard let provider = ours.first else {
            let endpoints = kms.compactMap { $0["endpoint"]?.string }.joined(separator: ", ")
            add("kms-endpoint", .fail, "no kms provider reaches kekd's socket \(options.socket) (endpoints: \(endpoints))",
                fix: "set endpoint: unix://\(options.socket) and mount \(folder(of: options.socket)) into kube-apiserver")
            return
        }
        add("kms-endpoint", .ok, "\(provider["name"]?.string ?? "?") → \(provider["endpoint"]?.string ?? "")")
        if !socketMounted {
            add("apiserver-mounts", .fail, "kekd's socket folder \(folder(of: options.socket)) is not a hostPath mount of kube-apiserver",
                fix: "add a hostPath volume and volumeMount for \(folder(of: options.socket)) to \(DoctorCommand.manifestPath)")
        } else if configMounted {
            add("apiserver-mounts", .ok, "\(folder(of: containerPath)) and \(folder(of: options.socket)) are mounted")
        }
        let apiVersion = provider["apiVersion"]?.string ?? "v1"
        if apiVersion == "v2" {
            add("kms-provider", .ok, "kms apiVersion v2, name \(provider["name"]?.string ?? "?")")
        } else {
            add("kms-provider", .fail, "the kms provider uses apiVersion \(apiVersion): kekd serves KMS v2 only",
                fix: "set apiVersion: v2 on the kms provider")
        }
        if provider["cachesize"] != nil {
            add("kms-cachesize", .fail, "cachesize is set: it is a KMS v1 field and kube-apiserver refuses it for v2",
                fix: "remove cachesize from the kms provider")
        } else {
            add("kms-cachesize", .ok, "no cachesize")
        }
        if let timeout = provider["timeout"]?.string {
            switch goDurationSeconds(timeout) {
            case nil:
                add("kms-timeout", .fail, "timeout \(timeout.debugDescription) is not a duration", fix: "set timeout: 3s")
            case let seconds? where seconds < 1 || seconds > 30:
                add("kms-timeout", .warn, "timeout \(timeout) is outside 1s..30s: calls may time out, or a stuck plugin holds requests")
            default:
                add("kms-timeout", .ok, "timeout \(timeout)")
            }
        } else {
            add("kms-timeout", .ok, "timeout not set (kube-apiserver's default, 3s)")
        }
        if identityFirst.isEmpty {
            add("identity-order", .ok, "identity is not the first provider")
        } else {
            add("identity-order", .fail, "identity is the first provider for \(identityFirst.joined(separator: "; ")): new writes are stored unencrypted",
                fix: "put the kms provider first and identity last")
        }
    }

    // MARK: node

    private mutating func checkClock() {
        // struct timex on 64-bit Linux: modes (u32) at 0, maxerror (long) at 24, status (int) at 40; the buffer is
        // larger than the struct. modes 0 only reads the kernel's NTP state.
        var buffer = [UInt8](repeating: 0, count: 512)
        let state = buffer.withUnsafeMutableBytes { kernelAdjtimex($0.baseAddress!) }
        let status = buffer.withUnsafeBytes { $0.load(fromByteOffset: 40, as: Int32.self) }
        let maxError = buffer.withUnsafeBytes { $0.load(fromByteOffset: 24, as: Int.self) }
        let timeError: Int32 = 5, unsynchronised: Int32 = 0x0040   // TIME_ERROR, STA_UNSYNC (sys/timex.h)
        if state < 0 {
            add("clock", .warn, "clock synchronisation unknown (adjtimex: \(String(cString: strerror(errno))))")
        } else if state == timeError || status & unsynchronised != 0 {
            add("clock", .warn, "the kernel clock is not synchronised: audit times and key creation times may be off",
                fix: "enable NTP (timedatectl set-ntp true / chrony)")
        } else {
            add("clock", .ok, "synchronised (max error \(maxError) µs)")
        }
    }

    private mutating func checkDisk() {
        let target = options.auditLog == "-" ? options.stateDir : folder(of: options.auditLog)
        var fs = statvfs()
        guard statvfs(options.host(target), &fs) == 0 else {
            add("disk", .warn, "free space of \(target) unknown: \(String(cString: strerror(errno)))")
            return
        }
        let free = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        let mib = free >> 20
        if mib < 100 {
            add("disk", .fail, "\(mib) MiB free for \(target): the audit log will fail", fix: "free space or lower --audit-max-files")
        } else if mib < 1024 {
            add("disk", .warn, "\(mib) MiB free for \(target): less than 1 GiB for the audit log")
        } else {
            add("disk", .ok, "\(mib) MiB free for \(target)")
        }
    }

    // MARK: output

    func text() -> String {
        var lines: [String] = []
        for check in checks {
            lines.append(padded(check.status.rawValue, to: 5) + padded(check.name, to: 19) + check.detail)
            if check.status == .fail, let fix = check.fix { lines.append(String(repeating: " ", count: 24) + "fix: " + fix) }
        }
        let count = { (s: DoctorCommand.Status) in checks.filter { $0.status == s }.count }
        lines.append("\(count(.ok)) ok, \(count(.warn)) warn, \(count(.fail)) fail (not checked: /readyz/kms-providers, etcd)")
        return lines.joined(separator: "\n")
    }

    func json(ok: Bool) -> String {
        struct Check: Encodable { let name: String, status: String, detail: String, fix: String? }
        struct Report: Encodable { let ok: Bool, checks: [Check], not_checked: [String] }
        let report = Report(ok: ok, checks: checks.map { Check(name: $0.name, status: $0.status.rawValue, detail: $0.detail, fix: $0.fix) },
                            not_checked: ["/readyz/kms-providers", "etcd provider name"])
        return (try? jsonText(report)) ?? "{}"
    }
}

// MARK: helpers

private func octal(_ mode: mode_t) -> String {
    let digits = String(mode, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}

private func trimmed(_ path: String) -> String {
    var p = path
    while p.count > 1, p.hasSuffix("/") { p.removeLast() }
    return p
}

private func isPath(_ path: String, under folder: String) -> Bool {
    let f = trimmed(folder), p = trimmed(path)
    return f == "/" || p == f || p.hasPrefix(f + "/")
}

private func folder(of path: String) -> String {
    let p = trimmed(path)
    guard let slash = p.lastIndex(of: "/") else { return "." }
    return slash == p.startIndex ? "/" : String(p[..<slash])
}

/// glibc's adjtimex(2) wrapper: <sys/timex.h> is not part of Swift's Glibc module.
@_silgen_name("adjtimex")
private func kernelAdjtimex(_ buffer: UnsafeMutableRawPointer) -> Int32

/// A Go duration as kube-apiserver reads `timeout` (`3s`, `500ms`, `1.5s`, `1m30s`), in seconds. Our own flags'
/// grammar (CommandLineFlags.parseDuration) differs on purpose: it takes days and plain seconds, Go does not.
func goDurationSeconds(_ text: String) -> Double? {
    sumOfUnitParts(text, units: [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)])
}

/// A one-shot HTTP/1.1 GET to kekd's health endpoint (IPv4 literal or localhost), with a timeout.
enum HTTPProbe {
    struct ProbeError: Error, CustomStringConvertible { var description: String }

    static func get(address: String, path: String, timeoutSeconds: Int = 3) -> Result<(Int, String), ProbeError> {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            return .failure(ProbeError(description: "health address must be HOST:PORT"))
        }
        var host = String(address[..<colon])
        if host == "localhost" { host = "127.0.0.1" }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            return .failure(ProbeError(description: "health address host must be an IPv4 address"))
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(ProbeError(description: String(cString: strerror(errno)))) }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return .failure(ProbeError(description: "connect: \(String(cString: strerror(errno)))")) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(address)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            return .failure(ProbeError(description: "send: \(String(cString: strerror(errno)))"))
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while response.count < 1 << 22 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { return .failure(ProbeError(description: "recv: \(String(cString: strerror(errno)))")) }
            if n == 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let headerEnd = text.firstRange(of: "\r\n\r\n"), text.hasPrefix("HTTP/1."),
              let code = Int(text.dropFirst(9).prefix(3)) else {
            return .failure(ProbeError(description: "not an HTTP response"))
        }
        return .success((code, String(text[headerEnd.upperBound...])))
    }
}
