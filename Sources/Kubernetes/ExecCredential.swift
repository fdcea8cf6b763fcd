// kubeconfig `exec` credential plugins (client.authentication.k8s.io/v1 ExecCredential), as managed clusters
// need: run the command with the kubeconfig's env and KUBERNETES_EXEC_INFO, read status.token or a client
// certificate, keep it until expirationTimestamp.
import FoundationEssentials
import JSON
import Locking

public struct ExecCredential: Sendable, Equatable {
    public var token: String?
    public var clientCertificateData: String?
    public var clientKeyData: String?
    public var expiration: Date?

    /// Parses the plugin's stdout. Never echoes it: it holds the credential.
    public static func parse(_ output: [UInt8], apiVersion: String) throws(KubernetesError) -> ExecCredential {
        guard let json = JSONValue.parse(output) else { throw .invalid("exec credential plugin output is not JSON") }
        guard json["kind"]?.string == "ExecCredential" else { throw .invalid("exec credential plugin output is not an ExecCredential") }
        if let version = json["apiVersion"]?.string, version != apiVersion {
            throw .invalid("exec credential plugin answered apiVersion \(version), expected \(apiVersion)")
        }
        guard let status = json["status"], status.object != nil else { throw .invalid("exec credential plugin output has no status") }
        var credential = ExecCredential()
        credential.token = status["token"]?.string.flatMap { $0.isEmpty ? nil : $0 }
        credential.clientCertificateData = status["clientCertificateData"]?.string
        credential.clientKeyData = status["clientKeyData"]?.string
        guard (credential.clientCertificateData == nil) == (credential.clientKeyData == nil) else {
            throw .invalid("exec credential plugin gave clientCertificateData without clientKeyData, or the reverse")
        }
        guard credential.token != nil || credential.clientCertificateData != nil else {
            throw .invalid("exec credential plugin gave neither status.token nor status.clientCertificateData")
        }
        if let text = status["expirationTimestamp"]?.string {
            guard let date = try? Date(text, strategy: .iso8601) else {
                throw .invalid("exec credential plugin's status.expirationTimestamp \(text) is not RFC 3339")
            }
            credential.expiration = date
        }
        return credential
    }
}

final class ExecCredentialPlugin: Sendable {
    let config: ExecCredentialConfig
    let cluster: KubeconfigCluster
    private let cached = LockedValue<ExecCredential?>(nil)
    static let timeout: Double = 60

    init(config: ExecCredentialConfig, cluster: KubeconfigCluster) { self.config = config; self.cluster = cluster }

    func credential(refresh: Bool) throws(KubernetesError) -> ExecCredential {
        if !refresh, let current = cached.withLock({ $0 }), current.expiration.map({ $0.timeIntervalSinceNow > 10 }) ?? true {
            return current
        }
        var spec: [String: JSONValue] = ["interactive": .bool(false)]
        if config.provideClusterInfo {
            var info: [String: JSONValue] = ["server": .string(cluster.server)]
            if let data = cluster.certificateAuthorityData { info["certificate-authority-data"] = .string(Data(data).base64EncodedString()) }
            if let name = cluster.tlsServerName { info["tls-server-name"] = .string(name) }
            info["insecure-skip-tls-verify"] = .bool(cluster.insecureSkipTLSVerify)
            spec["cluster"] = .object(info)
        }
        let execInfo: JSONValue = .object(["apiVersion": .string(config.apiVersion), "kind": "ExecCredential", "spec": .object(spec)])
        var environment = Subprocess.currentEnvironment()
        environment.merge(config.env) { _, new in new }
        environment["KUBERNETES_EXEC_INFO"] = String(decoding: execInfo.serialized(), as: UTF8.self)
        let result = try Subprocess.run([config.command] + config.args, environment: environment, timeout: Self.timeout)
        guard !result.timedOut else { throw .invalid("exec credential plugin \(config.command) did not finish within \(Int(Self.timeout))s") }
        guard result.status == 0 else { throw .unauthorized("exec credential plugin \(config.command) failed with exit status \(result.status)") }
        let credential = try ExecCredential.parse(result.output, apiVersion: config.apiVersion)
        cached.withLock { $0 = credential }
        return credential
    }
}
