// `kekctl census`: which key holds every object kube-apiserver stored in etcd, read straight from etcd (issue 10).
// Prints names and counts only: never a value, a ciphertext or an annotation value.
import Census
import CommandLineFlags
import Etcd
import FoundationEssentials
import Glibc
import HTTPClient
import JSON
import Locking

enum CensusCommand {
    /// Exit code when etcd could not be read (unreachable, certificate refused, revision compacted, bad reply):
    /// distinct from 1 so a script checking `--require-key-id` never takes "could not look" for "not done".
    static let etcdUnreadable: Int32 = 3

    // kubeadm's etcd endpoint and the client certificate its etcd liveness probe uses.
    static let defaultEndpoint = "https://127.0.0.1:2379"
    static let defaultCACert = "/etc/kubernetes/pki/etcd/ca.crt"
    static let defaultCert = "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
    static let defaultKey = "/etc/kubernetes/pki/etcd/healthcheck-client.key"

    static let help = """
        usage: kekctl census [--etcd-endpoint URL] [--etcd-cacert F --etcd-cert F --etcd-key F] [--prefix /registry/]
                             [--resources secrets,configmaps,...] [--json] [--require-key-id ID] [--list KEY_ID|unencrypted]

        Reads every object kube-apiserver stored under --prefix in etcd (read-only, in pages, all at one revision)
        and counts them by resource, storage kind, KMS provider and key_id:
          kind kms-v2     k8s:enc:kms:v2:<provider>: + EncryptedObject; key_id is the one it was encrypted under
          kind kms-v1     k8s:enc:kms:v1:<provider>:
          kind aescbc, aesgcm, secretbox   k8s:enc:<kind>:v1:<key name>:; key_id is the key's name
          kind identity   not encrypted (JSON or Kubernetes protobuf)
          kind unknown    anything else
        A resource is the first path component after the prefix (secrets), or the first two when the first is an API
        group (example.com/widgets); --resources reads only those (names as in etcd keys).
        Defaults fit a kubeadm control-plane node (run as root): --etcd-endpoint \(defaultEndpoint),
          --etcd-cacert \(defaultCACert),
          --etcd-cert \(defaultCert), --etcd-key \(defaultKey).

        Output: a table (resource, kind, provider, key_id, count) and the total; --json prints exactly one object
          {"objects": N, "groups": [{"resource", "kind", "provider" (or null), "key_id" (or null), "count"}, ...]}.
        --list KEY_ID         print only the etcd keys of the objects under that key_id (any kind), one a line;
        --list unencrypted    the same for objects stored as identity.
        --require-key-id ID   exit 1 unless every object read is kms-v2 under ID (says how many are not, and how they
                              are stored): the proof that a rotation or a migration to encryption is complete.
        Never prints a value, a ciphertext or an annotation value.
        Exit codes: 0 done (and --require-key-id holds), 1 --require-key-id does not hold, 2 usage,
          3 etcd could not be read (unreachable, client certificate refused, revision compacted, bad reply).
        """

    static func run(_ argv: [String]) -> Int32 {
        runCommand(argv, help: help) { argv in
            let args = try Flags(argv, valueFlags: ["etcd-endpoint", "etcd-cacert", "etcd-cert", "etcd-key", "prefix",
                                                    "resources", "require-key-id", "list", "page-size"],
                                 switchFlags: ["json"], allowsPositionals: false)
            let prefix = args.value("prefix") ?? Census.defaultPrefix
            guard prefix.hasPrefix("/") else { throw UsageError(message: "--prefix must start with / (kube-apiserver's --etcd-prefix, default /registry/)") }
            var resources: [String]? = nil
            if let list = args.value("resources") {
                let names = list.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
                guard !names.isEmpty, names.allSatisfy({ !$0.hasPrefix("/") && !$0.hasSuffix("/") }) else {
                    throw UsageError(message: "--resources takes resource names separated by commas (secrets,configmaps,example.com/widgets)")
                }
                resources = names
            }
            // Hidden: keys per etcd request (tests use small pages to exercise paging).
            var pageSize = Census.defaultPageSize
            if let text = args.value("page-size") {
                guard let n = Int(text), n > 0, n <= 10_000 else { throw UsageError(message: "--page-size must be in 1...10000") }
                pageSize = n
            }
            let list = args.value("list")
            if list != nil && args.has("json") { throw UsageError(message: "--list prints etcd keys: it does not go with --json") }
            if list?.isEmpty == true { throw UsageError(message: "--list needs a key_id or `unencrypted`") }
            let requiredKeyID = args.value("require-key-id")
            if requiredKeyID?.isEmpty == true { throw UsageError(message: "--require-key-id needs a key_id") }

            let endpoint: Endpoint
            do throws(AddressError) { endpoint = try Endpoint(url: args.value("etcd-endpoint") ?? defaultEndpoint, what: "--etcd-endpoint") } catch {
                throw UsageError(message: error.message)
            }
            let tls = try tlsSettings(args, secure: endpoint.secure)
            let client: EtcdClient
            do throws(EtcdError) { client = try EtcdClient(endpoint: endpoint, tls: tls) } catch {
                printError("census: \(error.message)")
                return etcdUnreadable
            }

            var keys = KeyWriter()
            let report: CensusReport
            do throws(EtcdError) {
                report = try Census.run(client: client, prefix: prefix, resources: resources, pageSize: pageSize) { key, group in
                    guard let list else { return }
                    if list == "unencrypted" ? group.kind == .identity : group.keyID == list { keys.add(key) }
                }
            } catch {
                keys.flush()
                printError("census: \(error.message)")
                return etcdUnreadable
            }
            keys.flush()

            if list == nil {
                if args.has("json") {
                    writeStandardOutput(report.json.serialized() + [UInt8(ascii: "\n")])
                } else {
                    writeStandardOutput(table(report, prefix: Census.normalized(prefix: prefix)))
                }
            }
            guard let requiredKeyID else { return ExitCode.ok }
            let missing = report.notUnder(keyID: requiredKeyID)
            guard missing.count > 0 else {
                if list == nil && !args.has("json") {
                    writeStandardOutput("all \(report.objects) objects are kms-v2 under key_id \(requiredKeyID)\n")
                }
                return ExitCode.ok
            }
            let kinds = missing.byKind.sorted { $0.key < $1.key }
                .map { "\($0.value) \($0.key == .kmsV2 ? "kms-v2 under another key_id" : $0.key.rawValue)" }
            printError("census: \(missing.count) of \(report.objects) objects are not kms-v2 under key_id \(requiredKeyID): \(kinds.joined(separator: ", "))")
            return ExitCode.failure
        }
    }

    /// TLS files: the flags, else kubeadm's; each must be readable (the key also private, which HTTPClient checks).
    static func tlsSettings(_ args: Flags, secure: Bool) throws(UsageError) -> TLSSettings {
        guard secure else { return TLSSettings() }
        func file(_ flag: String, _ fallback: String) throws(UsageError) -> String {
            let path = args.value(flag) ?? fallback
            guard access(path, R_OK) == 0 else {
                let origin = args.value(flag) == nil ? " (kubeadm's default; give --\(flag))" : ""
                throw UsageError(message: "--\(flag): cannot read \(path)\(origin): \(String(cString: strerror(errno)))")
            }
            return path
        }
        return TLSSettings(caFile: try file("etcd-cacert", defaultCACert), clientCertFile: try file("etcd-cert", defaultCert),
                           clientKeyFile: try file("etcd-key", defaultKey))
    }

    static func table(_ report: CensusReport, prefix: String) -> String {
        let header = ["RESOURCE", "KIND", "PROVIDER", "KEY_ID", "COUNT"]
        let rows = report.groups.map { entry in
            [entry.group.resource, entry.group.kind.rawValue, entry.group.provider ?? "-", entry.group.keyID ?? "-", String(entry.count)]
        }
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        var out = ""
        for row in [header] + rows {
            out += row.enumerated().map { i, cell in i == row.count - 1 ? cell : padded(cell, to: widths[i]) }.joined(separator: "  ") + "\n"
        }
        out += "total: \(report.objects) objects under \(prefix) in \(rows.count) groups (etcd revision \(report.revision))\n"
        return out
    }

    /// Buffers listed keys into few write(2)s, however many there are.
    struct KeyWriter {
        private var buffer: [UInt8] = []
        mutating func add(_ key: [UInt8]) {
            buffer += key
            buffer.append(UInt8(ascii: "\n"))
            if buffer.count >= 64 * 1024 { flush() }
        }
        mutating func flush() {
            if !buffer.isEmpty { writeStandardOutput(buffer) }
            buffer.removeAll(keepingCapacity: true)
        }
    }
}
