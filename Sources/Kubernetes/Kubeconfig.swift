// kubeconfig files: where kubectl finds them, what they say (clusters, users, contexts), and the one cluster/user
// pair the current context picks. Anything this client cannot honour faithfully is refused with the field's name
// rather than ignored: silently dropping an auth-provider or a proxy would send requests the operator did not mean.
import FoundationEssentials
import YAML

public enum KubernetesError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A kubeconfig, flag or answer this client cannot use.
    case invalid(String)
    case notFound(String)
    case conflict(String)
    /// 410 Gone: a list `continue` token expired.
    case gone(String)
    case tooManyRequests(retryAfter: Double, String)
    case unauthorized(String)
    case server(status: Int, String)
    /// No answer at all (connect, TLS, timeout).
    case transport(String)

    public var description: String {
        switch self {
        case .invalid(let m), .notFound(let m), .conflict(let m), .gone(let m), .unauthorized(let m), .transport(let m): m
        case .tooManyRequests(_, let m): m
        case .server(let status, let m): "\(status): \(m)"
        }
    }
}

public struct ExecCredentialConfig: Sendable, Equatable {
    public var apiVersion: String
    public var command: String
    public var args: [String] = []
    public var env: [String: String] = [:]
    public var provideClusterInfo = false
}

public struct KubeconfigCluster: Sendable, Equatable {
    public var server: String
    public var certificateAuthority: String?
    public var certificateAuthorityData: [UInt8]?
    public var tlsServerName: String?
    public var insecureSkipTLSVerify = false
}

public struct KubeconfigUser: Sendable, Equatable {
    public var token: String?
    public var tokenFile: String?
    public var clientCertificate: String?
    public var clientCertificateData: [UInt8]?
    public var clientKey: String?
    public var clientKeyData: [UInt8]?
    public var exec: ExecCredentialConfig?
}

public struct KubeconfigContext: Sendable, Equatable {
    public var cluster: String
    public var user: String
    public var namespace: String?
}

public struct Kubeconfig: Sendable, Equatable {
    public var clusters: [String: KubeconfigCluster] = [:]
    public var users: [String: KubeconfigUser] = [:]
    public var contexts: [String: KubeconfigContext] = [:]
    public var currentContext: String?

    public init() {}

    /// The files to read, as kubectl picks them: `--kubeconfig`, else every existing file of `$KUBECONFIG` (colon
    /// separated, merged, first wins), else `~/.kube/config`, else `/etc/kubernetes/admin.conf` (a kubeadm node).
    public static func locate(flag: String?, environment: [String: String], exists: (String) -> Bool) throws(KubernetesError) -> [String] {
        if let flag, !flag.isEmpty {
            guard exists(flag) else { throw .invalid("kubeconfig \(flag) does not exist") }
            return [flag]
        }
        if let list = environment["KUBECONFIG"], !list.isEmpty {
            let files = list.split(separator: ":").map(String.init).filter(exists)
            guard !files.isEmpty else { throw .invalid("none of the files in $KUBECONFIG (\(list)) exists") }
            return files
        }
        if let home = environment["HOME"], exists(home + "/.kube/config") { return [home + "/.kube/config"] }
        if exists("/etc/kubernetes/admin.conf") { return ["/etc/kubernetes/admin.conf"] }
        throw .invalid("no kubeconfig found (--kubeconfig, $KUBECONFIG, ~/.kube/config, /etc/kubernetes/admin.conf)")
    }

    /// Reads and merges `paths` (the first file to define a name or the current context wins, as kubectl does).
    public static func load(paths: [String]) throws(KubernetesError) -> Kubeconfig {
        var merged = Kubeconfig()
        for path in paths {
            guard let data = FileManager.default.contents(atPath: path) else { throw .invalid("cannot read kubeconfig \(path)") }
            let one = try parse(String(decoding: data, as: UTF8.self), path: path)
            merged.clusters.merge(one.clusters) { first, _ in first }
            merged.users.merge(one.users) { first, _ in first }
            merged.contexts.merge(one.contexts) { first, _ in first }
            if merged.currentContext == nil { merged.currentContext = one.currentContext }
        }
        return merged
    }

    /// Parses one kubeconfig document. Relative file paths in it are taken relative to `path`'s folder.
    public static func parse(_ text: String, path: String) throws(KubernetesError) -> Kubeconfig {
        let root: YAMLValue
        do { root = try YAML.parse(text) } catch { throw .invalid("kubeconfig \(path): \(error)") }
        let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        let reader = FieldReader(path: path, folder: folder)
        var config = Kubeconfig()
        guard root.entries != nil || root.isNull else { throw .invalid("kubeconfig \(path): not a mapping") }
        if let kind = root["kind"]?.string, kind != "Config" { throw .invalid("kubeconfig \(path): kind is \(kind), not Config") }
        config.currentContext = root["current-context"]?.string.flatMap { $0.isEmpty ? nil : $0 }
        for (name, body) in try reader.namedList(root, "clusters", inner: "cluster") {
            let field = "clusters[\(name)].cluster"
            try reader.refuse(body, field, ["proxy-url": "a proxy", "certificate-authority-data-file": nil])
            guard let server = body["server"]?.string, !server.isEmpty else { throw reader.error("\(field).server is missing") }
            var cluster = KubeconfigCluster(server: server)
            cluster.certificateAuthority = reader.file(body["certificate-authority"])
            cluster.certificateAuthorityData = try reader.base64(body["certificate-authority-data"], "\(field).certificate-authority-data")
            cluster.tlsServerName = body["tls-server-name"]?.string
            cluster.insecureSkipTLSVerify = body["insecure-skip-tls-verify"]?.string == "true"
            config.clusters[name] = cluster
        }
        for (name, body) in try reader.namedList(root, "users", inner: "user") {
            let field = "users[\(name)].user"
            try reader.refuse(body, field, ["auth-provider": "use an exec credential plugin", "username": "basic auth",
                                           "password": "basic auth", "as": "impersonation", "as-groups": "impersonation",
                                           "as-uid": "impersonation", "as-user-extra": "impersonation"])
            var user = KubeconfigUser()
            user.token = body["token"]?.string
            user.tokenFile = reader.file(body["tokenFile"])
            user.clientCertificate = reader.file(body["client-certificate"])
            user.clientKey = reader.file(body["client-key"])
            user.clientCertificateData = try reader.base64(body["client-certificate-data"], "\(field).client-certificate-data")
            user.clientKeyData = try reader.base64(body["client-key-data"], "\(field).client-key-data")
            if let exec = body["exec"], !exec.isNull {
                user.exec = try reader.exec(exec, "\(field).exec")
            }
            config.users[name] = user
        }
        for (name, body) in try reader.namedList(root, "contexts", inner: "context") {
            guard let cluster = body["cluster"]?.string, let user = body["user"]?.string else {
                throw reader.error("contexts[\(name)].context needs cluster and user")
            }
            config.contexts[name] = KubeconfigContext(cluster: cluster, user: user, namespace: body["namespace"]?.string)
        }
        return config
    }

    /// The cluster and user of `context` (default: current-context).
    public func resolve(context: String? = nil) throws(KubernetesError) -> (name: String, cluster: KubeconfigCluster, user: KubeconfigUser) {
        guard let name = context ?? currentContext else { throw .invalid("kubeconfig has no current-context (give --context)") }
        guard let ctx = contexts[name] else { throw .invalid("kubeconfig has no context \(name)") }
        guard let cluster = clusters[ctx.cluster] else { throw .invalid("context \(name) names cluster \(ctx.cluster), which the kubeconfig does not define") }
        guard let user = users[ctx.user] else { throw .invalid("context \(name) names user \(ctx.user), which the kubeconfig does not define") }
        return (name, cluster, user)
    }
}

/// Field access with errors that name the file and the field.
private struct FieldReader {
    let path: String
    let folder: String

    func error(_ message: String) -> KubernetesError { .invalid("kubeconfig \(path): \(message)") }

    /// `clusters: [{name: x, cluster: {...}}]` as (name, body) pairs.
    func namedList(_ root: YAMLValue, _ key: String, inner: String) throws(KubernetesError) -> [(String, YAMLValue)] {
        guard let value = root[key], !value.isNull else { return [] }
        guard let items = value.sequence else { throw error("\(key) is not a list") }
        var out: [(String, YAMLValue)] = []
        for (i, item) in items.enumerated() {
            guard let name = item["name"]?.string, !name.isEmpty else { throw error("\(key)[\(i)] has no name") }
            guard let body = item[inner], body.entries != nil else { throw error("\(key)[\(name)].\(inner) is missing or not a mapping") }
            out.append((name, body))
        }
        return out
    }

    /// Refuses any of `fields` present in `body` (with what it is, as a hint).
    func refuse(_ body: YAMLValue, _ field: String, _ fields: [String: String?]) throws(KubernetesError) {
        for (key, hint) in fields.sorted(by: { $0.key < $1.key }) where body[key].map({ !$0.isNull }) ?? false {
            throw error("\(field).\(key) is not supported" + (hint.map { " (\($0))" } ?? ""))
        }
    }

    func file(_ value: YAMLValue?) -> String? {
        guard let p = value?.string, !p.isEmpty else { return nil }
        return p.hasPrefix("/") ? p : folder + "/" + p
    }

    func base64(_ value: YAMLValue?, _ field: String) throws(KubernetesError) -> [UInt8]? {
        guard let text = value?.string, !text.isEmpty else { return nil }
        guard let data = Data(base64Encoded: text.filter { !$0.isWhitespace }) else { throw error("\(field) is not base64") }
        return [UInt8](data)
    }

    func exec(_ exec: YAMLValue, _ field: String) throws(KubernetesError) -> ExecCredentialConfig {
        guard exec.entries != nil else { throw error("\(field) is not a mapping") }
        let apiVersion = exec["apiVersion"]?.string ?? ""
        guard apiVersion == "client.authentication.k8s.io/v1" || apiVersion == "client.authentication.k8s.io/v1beta1" else {
            throw error("\(field).apiVersion \(apiVersion.isEmpty ? "(missing)" : apiVersion) is not supported (client.authentication.k8s.io/v1)")
        }
        guard let command = exec["command"]?.string, !command.isEmpty else { throw error("\(field).command is missing") }
        if let mode = exec["interactiveMode"]?.string, mode == "Always" {
            throw error("\(field).interactiveMode Always is not supported (kekctl runs plugins without a terminal)")
        }
        var config = ExecCredentialConfig(apiVersion: apiVersion, command: command)
        config.args = exec["args"]?.sequence?.compactMap(\.string) ?? []
        for (i, item) in (exec["env"]?.sequence ?? []).enumerated() {
            guard let name = item["name"]?.string, let value = item["value"]?.string else { throw error("\(field).env[\(i)] needs name and value") }
            config.env[name] = value
        }
        config.provideClusterInfo = exec["provideClusterInfo"]?.string == "true"
        return config
    }
}
