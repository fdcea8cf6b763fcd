// The rotation's cluster ports on the Kubernetes API: apiservers found through the `kubernetes` EndpointSlices in
// `default` (or given), their /readyz/kms-providers and /metrics, and the objects the migrate phase rewrites.
import JSON
import Kubernetes
import Locking
import PrometheusParser

/// The metric kube-apiserver updates each time its KMS v2 Status call returns, labelled by provider and key_id hash.
public let keyIDHashMetric = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"

/// A resource the migrate phase rewrites: `secrets`, `configmaps` (core v1) or `RESOURCE.GROUP/VERSION`.
public struct ResourceKind: Sendable, Equatable {
    public var name: String
    public var group: String?
    public var version: String

    public init(_ text: String) throws(RotationError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-./")
        guard !text.isEmpty, text.allSatisfy({ allowed.contains($0) }) else { throw RotationError("resource \"\(text)\" is not a resource name") }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        if parts.count == 1, !text.contains(".") {
            name = text; group = nil; version = "v1"
        } else if parts.count == 2, let dot = parts[0].firstIndex(of: ".") {
            name = String(parts[0][..<dot]); group = String(parts[0][parts[0].index(after: dot)...]); version = String(parts[1])
            guard !name.isEmpty, !group!.isEmpty, !version.isEmpty else { throw RotationError("resource \"\(text)\": use RESOURCE.GROUP/VERSION") }
        } else {
            throw RotationError("resource \"\(text)\": use a core resource (secrets) or RESOURCE.GROUP/VERSION (widgets.example.com/v1)")
        }
    }

    var prefix: String { group.map { "/apis/\($0)/\(version)" } ?? "/api/\(version)" }
    /// The cluster-wide list path.
    public var listPath: String { "\(prefix)/\(name)" }
    /// The object's own path (namespaced when it has a namespace).
    public func path(namespace: String?, name object: String) -> String {
        if let namespace, !namespace.isEmpty { return "\(prefix)/namespaces/\(percentEncoded(namespace))/\(name)/\(percentEncoded(object))" }
        return "\(prefix)/\(name)/\(percentEncoded(object))"
    }
}

public final class KubernetesFleet: APIServerFleet, ObjectStore {
    let client: KubernetesClient
    let explicit: [String]?
    private let siblings = LockedValue<[String: KubernetesClient]>([:])

    /// `apiservers`: the `--apiservers` override; nil to discover them from the EndpointSlices.
    public init(client: KubernetesClient, apiservers: [String]?) {
        self.client = client
        self.explicit = apiservers
    }

    private func at(_ server: String) throws(RotationError) -> KubernetesClient {
        if let known = siblings.withLock({ $0[server] }) { return known }
        do {
            let made = try client.sibling(server: server)
            siblings.withLock { $0[server] = made }
            return made
        } catch {
            throw RotationError("\(server): \(error)")
        }
    }

    public func discover() throws(RotationError) -> [String] {
        if let explicit { return explicit }
        let slices: JSONValue
        do {
            slices = try client.getJSON("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector="
                                        + percentEncoded("kubernetes.io/service-name=kubernetes"))
        } catch {
            throw RotationError("cannot list the kubernetes EndpointSlices in default (\(error)); give --apiservers")
        }
        var servers: [String] = []
        for slice in slices["items"]?.array ?? [] {
            let ports = (slice["ports"]?.array ?? []).compactMap { $0["port"]?.int }
            for endpoint in slice["endpoints"]?.array ?? [] where endpoint["conditions"]?["ready"]?.bool != false {
                for address in endpoint["addresses"]?.array?.compactMap(\.string) ?? [] {
                    for port in ports {
                        let host = address.contains(":") ? "[\(address)]" : address
                        let url = "https://\(host):\(port)"
                        if !servers.contains(url) { servers.append(url) }
                    }
                }
            }
        }
        return servers
    }

    public func kmsReadiness(_ apiserver: String) throws(RotationError) -> String? {
        do {
            let (status, body) = try at(apiserver).getText("/readyz/kms-providers")
            if status == 200 { return nil }
            let line = body.split(separator: "\n").first { $0.contains("failed") || $0.hasPrefix("[-]") } ?? body.split(separator: "\n").first ?? ""
            return "HTTP \(status) \(line.prefix(200))"
        } catch {
            throw RotationError("\(apiserver): \(error)")
        }
    }

    public func currentKeyIDHash(_ apiserver: String, provider: String) throws(RotationError) -> String? {
        let text: String
        do {
            let (status, body) = try at(apiserver).getText("/metrics")
            guard status == 200 else { throw RotationError("\(apiserver): GET /metrics answered HTTP \(status)") }
            text = body
        } catch let error as RotationError { throw error } catch {
            throw RotationError("\(apiserver): \(error)")
        }
        return try Self.currentKeyIDHash(metrics: text, provider: provider, apiserver: apiserver)
    }

    /// The key_id_hash of the provider's series with the newest timestamp.
    public static func currentKeyIDHash(metrics text: String, provider: String, apiserver: String) throws(RotationError) -> String? {
        let exposition: ParsedExposition
        do { exposition = try ExpositionParser.parse(text) } catch { throw RotationError("\(apiserver): /metrics is not Prometheus text: \(error)") }
        let series = exposition.samples.filter { $0.name == keyIDHashMetric && $0.labels["provider_name"] == provider }
        return series.max { $0.value < $1.value }?.labels["key_id_hash"]
    }

    // MARK: ObjectStore

    private func kind(_ resource: String) throws(APIFailure) -> ResourceKind {
        do { return try ResourceKind(resource) } catch { throw .fatal(error.message) }
    }

    private static func failure(_ error: KubernetesError) -> APIFailure {
        switch error {
        case .notFound: .notFound
        case .conflict: .conflict
        case .gone: .expired
        case .tooManyRequests(let wait, _): .tooManyRequests(retryAfter: wait)
        case .server(let status, let message): .server(status: status, message: message)
        case .transport(let message): .server(status: 0, message: message)   // worth a bounded retry
        case .invalid(let message), .unauthorized(let message): .fatal(message)
        }
    }

    public func list(resource: String, limit: Int, continueToken: String?) throws(APIFailure) -> ObjectPage {
        let kind = try kind(resource)
        do {
            let page = try client.list(kind.listPath, limit: limit, continueToken: continueToken)
            return ObjectPage(items: page.items, continueToken: page.continueToken, remaining: page.remaining)
        } catch {
            throw Self.failure(error)
        }
    }

    private func path(_ kind: ResourceKind, _ object: JSONValue) throws(APIFailure) -> String {
        guard let name = object["metadata"]?["name"]?.string, !name.isEmpty else { throw .fatal("listed object without metadata.name") }
        return kind.path(namespace: object["metadata"]?["namespace"]?.string, name: name)
    }

    public func get(resource: String, like object: JSONValue) throws(APIFailure) -> JSONValue {
        let kind = try kind(resource)
        do { return try client.getJSON(try path(kind, object)) } catch let error as APIFailure { throw error } catch {
            throw Self.failure(error as! KubernetesError)
        }
    }

    public func replace(resource: String, object: JSONValue) throws(APIFailure) {
        let kind = try kind(resource)
        var body = object
        // A list's items carry no apiVersion/kind; a PUT body must.
        if case .object(var members) = body {
            if members["apiVersion"] == nil { members["apiVersion"] = .string(kind.group.map { "\($0)/\(kind.version)" } ?? kind.version) }
            if members["kind"] == nil, let listKind = Self.kindName(kind.name) { members["kind"] = .string(listKind) }
            body = .object(members)
        }
        do { try client.putJSON(try path(kind, object), body) } catch let error as APIFailure { throw error } catch {
            throw Self.failure(error as! KubernetesError)
        }
    }

    /// The Kind of the core resources rewritten most (the apiserver refuses a PUT without it).
    static func kindName(_ resource: String) -> String? {
        ["secrets": "Secret", "configmaps": "ConfigMap"][resource]
    }
}

/// The weaker proof, when etcd cannot be read: every apiserver reports the new key in its own metrics, and the
/// migrate phase rewrote every object through them.
public struct MetricsVerifier: MigrationVerifier {
    let fleet: APIServerFleet
    let provider: String
    public init(fleet: APIServerFleet, provider: String) { self.fleet = fleet; self.provider = provider }

    public func verify(newKeyID: String, resources: [String], log: (String) -> Void) throws(RotationError) -> (method: String, summary: String) {
        let target = kmsKeyIDHash(newKeyID)
        var off: [String] = []
        let apiservers = try fleet.discover()
        for apiserver in apiservers where try fleet.currentKeyIDHash(apiserver, provider: provider) != target { off.append(apiserver) }
        guard off.isEmpty else { throw RotationError("apiserver(s) \(off.joined(separator: ", ")) no longer report key_id \(newKeyID)") }
        return ("metrics", "etcd not reachable (no --etcd-endpoint): all \(apiservers.count) apiserver(s) report key_id \(newKeyID) and every "
                + "object was rewritten through them; this is the WEAKER proof, it does not read what etcd stores "
                + "(run `kekctl census --require-key-id \(newKeyID)` where etcd is reachable)")
    }
}
