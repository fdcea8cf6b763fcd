// A small Kubernetes REST client on the project's HTTPS/1.1 client: the kubeconfig's TLS settings and credentials,
// JSON GET/PUT, paginated lists, and the status codes a caller must act on surfaced as typed errors.
import FoundationEssentials
import Glibc
import HTTPClient
import JSON
import Locking

/// Where the bearer token comes from. A token file is read at each use (projected tokens are rotated on disk); an
/// exec plugin's token is kept until its expirationTimestamp or a 401.
enum TokenSource: Sendable {
    case none
    case fixed(String)
    case file(String)
    case exec(ExecCredentialPlugin)
}

/// Files holding PEM data from the kubeconfig or an exec plugin: the TLS layer loads certificates from paths. A
/// private 0700 folder, files 0600, removed when the client goes away.
final class PrivateFolder: Sendable {
    let path: String
    init() throws(KubernetesError) {
        let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array((base + "/kekctl-kube-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw .invalid("cannot create a private temporary folder in \(base)")
        }
        path = String(cString: made)
    }
    func write(_ name: String, _ bytes: [UInt8]) throws(KubernetesError) -> String {
        let file = path + "/" + name
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0, writeFully(fd, bytes) else { if fd >= 0 { close(fd) }; throw .invalid("cannot write \(file)") }
        close(fd)
        return file
    }
    deinit {
        if let names = try? FileManager.default.contentsOfDirectory(atPath: path) {
            for name in names { unlink(path + "/" + name) }
        }
        rmdir(path)
    }
}

public final class KubernetesClient: Sendable {
    /// The apiserver this client talks to, as `https://host:port`.
    public let server: String
    let http: HTTPSClient
    let tls: TLSSettings
    let tokens: TokenSource
    let folder: PrivateFolder
    let requestTimeout: Double
    /// The largest list page body accepted (a page of 500 big Secrets can be tens of MiB).
    static let maxBodyBytes = 256 << 20

    init(server: String, tls: TLSSettings, tokens: TokenSource, folder: PrivateFolder, requestTimeout: Double) throws(KubernetesError) {
        let endpoint: Endpoint
        do { endpoint = try Endpoint(url: server, what: "apiserver address") } catch { throw .invalid(error.message) }
        guard endpoint.secure else { throw .invalid("apiserver address \(server) is not https://") }
        var limits = HTTPParserLimits()
        limits.maxBodyBytes = Self.maxBodyBytes
        do {
            http = try HTTPSClient(endpoint: endpoint, tls: tls, connectTimeout: 5, maxIdle: 16, limits: limits)
        } catch {
            throw .invalid("TLS settings for \(server): \(error)")
        }
        self.server = server; self.tls = tls; self.tokens = tokens; self.folder = folder; self.requestTimeout = requestTimeout
    }

    /// A client for the kubeconfig's current (or named) context. `warn` hears about insecure settings.
    public static func fromKubeconfig(_ config: Kubeconfig, context: String? = nil, requestTimeout: Double = 30,
                                      warn: (String) -> Void) throws(KubernetesError) -> KubernetesClient {
        let (name, cluster, user) = try config.resolve(context: context)
        let folder = try PrivateFolder()
        var tls = TLSSettings(serverName: cluster.tlsServerName)
        if cluster.insecureSkipTLSVerify {
            warn("warning: kubeconfig context \(name) sets insecure-skip-tls-verify: the apiserver's certificate is NOT checked")
            tls.insecureSkipVerify = true
        }
        tls.caFile = try cluster.certificateAuthorityData.map { bytes throws(KubernetesError) in try folder.write("ca.crt", bytes) } ?? cluster.certificateAuthority
        tls.clientCertFile = try user.clientCertificateData.map { bytes throws(KubernetesError) in try folder.write("client.crt", bytes) } ?? user.clientCertificate
        tls.clientKeyFile = try user.clientKeyData.map { bytes throws(KubernetesError) in try folder.write("client.key", bytes) } ?? user.clientKey
        guard (tls.clientCertFile == nil) == (tls.clientKeyFile == nil) else {
            throw .invalid("kubeconfig user of context \(name) has a client certificate without a key, or a key without a certificate")
        }
        var tokens = TokenSource.none
        if let token = user.token, !token.isEmpty { tokens = .fixed(token) }
        else if let file = user.tokenFile { tokens = .file(file) }
        else if let exec = user.exec {
            let plugin = ExecCredentialPlugin(config: exec, cluster: cluster)
            let credential = try plugin.credential(refresh: false)
            if let cert = credential.clientCertificateData, let key = credential.clientKeyData {
                tls.clientCertFile = try folder.write("exec-client.crt", Array(cert.utf8))
                tls.clientKeyFile = try folder.write("exec-client.key", Array(key.utf8))
            }
            if credential.token != nil { tokens = .exec(plugin) }
        }
        return try KubernetesClient(server: cluster.server, tls: tls, tokens: tokens, folder: folder, requestTimeout: requestTimeout)
    }

    /// The same credentials and TLS settings against another apiserver of the cluster (one EndpointSlice address).
    /// Host-name verification keeps the kubeconfig server's name unless tls-server-name overrides it.
    public func sibling(server other: String) throws(KubernetesError) -> KubernetesClient {
        if other == server { return self }
        var settings = tls
        if settings.serverName == nil, let host = try? Endpoint(url: server, what: "apiserver address").host, !isIPLiteral(host) {
            settings.serverName = host
        }
        return try KubernetesClient(server: other, tls: settings, tokens: tokens, folder: folder, requestTimeout: requestTimeout)
    }

    private func bearer(refresh: Bool) throws(KubernetesError) -> String? {
        switch tokens {
        case .none: return nil
        case .fixed(let token): return token
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else { throw .invalid("cannot read token file \(path)") }
            let token = String(String(decoding: data, as: UTF8.self).filter { !$0.isWhitespace })
            guard !token.isEmpty else { throw .invalid("token file \(path) is empty") }
            return token
        case .exec(let plugin): return try plugin.credential(refresh: refresh).token
        }
    }

    /// One exchange; any answer is returned (the caller maps statuses). A 401 with a refreshable credential
    /// (exec plugin) is retried once with a fresh one.
    public func send(_ method: String, _ path: String, body: [UInt8] = [], contentType: String? = nil,
                     accept: String = "application/json") throws(KubernetesError) -> HTTPResponse {
        var refreshed = false
        while true {
            var headers: [(name: String, value: String)] = [("Accept", accept), ("User-Agent", "kekctl")]
            if let token = try bearer(refresh: refreshed) {
                guard token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { throw .invalid("bearer token contains characters a token cannot have") }
                headers.append(("Authorization", "Bearer " + token))
            }
            if let contentType { headers.append(("Content-Type", contentType)) }
            let response: HTTPResponse
            do {
                response = try http.send(HTTPRequest(method: method, path: path, headers: headers, body: body),
                                         deadline: Date(timeIntervalSinceNow: requestTimeout))
            } catch {
                throw .transport("\(server): \(error)")
            }
            if response.status == 401, case .exec = tokens, !refreshed { refreshed = true; continue }
            return response
        }
    }

    /// The typed error for a non-2xx answer, with the apiserver's own message (a metav1.Status) when it sent one.
    public func failure(_ response: HTTPResponse, _ what: String) -> KubernetesError {
        let detail = JSONValue.parse(response.body)?["message"]?.string ?? "HTTP \(response.status)"
        let message = "\(what) on \(server): \(detail)"
        switch response.status {
        case 404: return .notFound(message)
        case 409: return .conflict(message)
        case 410: return .gone(message)
        case 429:
            let wait = response.header("Retry-After").flatMap { Double($0.filter { $0 != " " }) } ?? 1
            return .tooManyRequests(retryAfter: min(max(wait, 0), 300), message)
        case 401, 403: return .unauthorized(message + " (check the kubeconfig's credentials)")
        case 500...599: return .server(status: response.status, message)
        default: return .invalid("\(message) (HTTP \(response.status))")
        }
    }

    public func getJSON(_ path: String) throws(KubernetesError) -> JSONValue {
        let response = try send("GET", path)
        guard (200...299).contains(response.status) else { throw failure(response, "GET \(path)") }
        guard let json = JSONValue.parse(response.body, maxDepth: 128) else { throw .invalid("GET \(path) on \(server): answer is not JSON") }
        return json
    }

    /// PUT `object` as is (unknown fields included) and return what the apiserver stored.
    @discardableResult
    public func putJSON(_ path: String, _ object: JSONValue) throws(KubernetesError) -> JSONValue {
        let response = try send("PUT", path, body: object.serialized(), contentType: "application/json")
        guard (200...299).contains(response.status) else { throw failure(response, "PUT \(path)") }
        return JSONValue.parse(response.body, maxDepth: 128) ?? .null
    }

    /// One page of a list: items, the next `continue` token, and `metadata.remainingItemCount` when given.
    public func list(_ path: String, limit: Int, continueToken: String?) throws(KubernetesError) -> (items: [JSONValue], continueToken: String?, remaining: Int?) {
        var query = "?limit=\(limit)"
        if let continueToken { query += "&continue=" + percentEncoded(continueToken) }
        let json = try getJSON(path + query)
        guard let items = json["items"]?.array ?? (json["items"]?.isNull == true ? [] : nil) else {
            throw .invalid("GET \(path) on \(server): answer has no items list")
        }
        let next = json["metadata"]?["continue"]?.string.flatMap { $0.isEmpty ? nil : $0 }
        return (items, next, json["metadata"]?["remainingItemCount"]?.int)
    }

    /// A non-JSON endpoint (/metrics, /readyz/...): status and body text.
    public func getText(_ path: String) throws(KubernetesError) -> (status: Int, body: String) {
        let response = try send("GET", path, accept: "text/plain")
        return (response.status, String(decoding: response.body, as: UTF8.self))
    }
}

/// Query-string encoding: everything but unreserved characters as %XX.
public func percentEncoded(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = Array("0123456789ABCDEF")
            out += "%" + String(hex[Int(byte >> 4)]) + String(hex[Int(byte & 15)])
        }
    }
    return out
}

/// Whether `host` is an IP literal (then certificate verification checks it as an IP SAN).
func isIPLiteral(_ host: String) -> Bool {
    var v4 = in_addr(), v6 = in6_addr()
    return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
}
