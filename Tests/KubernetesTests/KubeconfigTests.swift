// kubeconfig reading as kubectl does it (kubeadm's admin.conf, merged $KUBECONFIG, relative paths, tokens) and
// exec credential plugins (ExecCredential output, KUBERNETES_EXEC_INFO, env), with one-line refusals naming the field.
import Foundation
import Testing
@testable import Kubernetes

/// The shape `kubeadm init` writes to /etc/kubernetes/admin.conf (data shortened, still base64).
let adminConf = """
    apiVersion: v1
    clusters:
    - cluster:
        certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUMvakNDQWVhZ0F3SUJBZ0lCQURBTkJna3Foa2lHOXcwQkFRc0ZBREFWTVJNd0VRWURWUVFERXdwcmRXSmwKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=
        server: https://10.0.0.10:6443
      name: kubernetes
    contexts:
    - context:
        cluster: kubernetes
        user: kubernetes-admin
      name: kubernetes-admin@kubernetes
    current-context: kubernetes-admin@kubernetes
    kind: Config
    preferences: {}
    users:
    - name: kubernetes-admin
      user:
        client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSURJVENDQWdtZ0F3SUJBZ0lJCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
        client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFb3dJQkFBS0NBUUVBCi0tLS0tRU5EIFJTQSBQUklWQVRFIEtFWS0tLS0tCg==

    """

@Suite struct KubeconfigTests {
    @Test func readsKubeadmAdminConf() throws {
        let config = try Kubeconfig.parse(adminConf, path: "/etc/kubernetes/admin.conf")
        let (name, cluster, user) = try config.resolve()
        #expect(name == "kubernetes-admin@kubernetes")
        #expect(cluster.server == "https://10.0.0.10:6443")
        #expect(String(decoding: cluster.certificateAuthorityData ?? [], as: UTF8.self).hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(String(decoding: user.clientCertificateData ?? [], as: UTF8.self).hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(String(decoding: user.clientKeyData ?? [], as: UTF8.self).hasPrefix("-----BEGIN RSA PRIVATE KEY-----"))
        #expect(user.token == nil && user.exec == nil)
        #expect(!cluster.insecureSkipTLSVerify)
    }

    @Test func relativePathsTokenFileServerNameAndContexts() throws {
        let text = """
            apiVersion: v1
            kind: Config
            clusters:
            - name: a
              cluster:
                server: "https://api.example.com:6443"
                certificate-authority: pki/ca.crt
                tls-server-name: kubernetes
                insecure-skip-tls-verify: true
            users:
            - name: robot
              user:
                tokenFile: /var/run/secrets/token
                client-certificate: client.crt
                client-key: /abs/client.key
            contexts:
            - name: one
              context: {cluster: a, user: robot, namespace: kube-system}
            - name: two
              context:
                cluster: missing
                user: robot
            current-context: one
            """
        let config = try Kubeconfig.parse(text, path: "/home/op/.kube/config")
        let (_, cluster, user) = try config.resolve()
        #expect(cluster.certificateAuthority == "/home/op/.kube/pki/ca.crt")
        #expect(cluster.tlsServerName == "kubernetes")
        #expect(cluster.insecureSkipTLSVerify)
        #expect(user.tokenFile == "/var/run/secrets/token")
        #expect(user.clientCertificate == "/home/op/.kube/client.crt")
        #expect(user.clientKey == "/abs/client.key")
        #expect(config.contexts["one"]?.namespace == "kube-system")
        #expect(throws: KubernetesError.invalid("context two names cluster missing, which the kubeconfig does not define")) {
            try config.resolve(context: "two")
        }
    }

    @Test func refusesUnsupportedConstructsNamingTheField() {
        func refusal(_ text: String) -> String {
            do { _ = try Kubeconfig.parse(text, path: "kc"); return "accepted" } catch { return error.description }
        }
        let base = "clusters:\n- name: c\n  cluster:\n    server: https://x\nusers:\n- name: u\n  user:\n"
        #expect(refusal(base + "    auth-provider:\n      name: gcp\n") == "kubeconfig kc: users[u].user.auth-provider is not supported (use an exec credential plugin)")
        #expect(refusal(base + "    username: admin\n    password: secret\n").contains("users[u].user.password is not supported"))
        #expect(refusal(base + "    exec:\n      apiVersion: client.authentication.k8s.io/v1alpha1\n      command: x\n")
                .contains("users[u].user.exec.apiVersion client.authentication.k8s.io/v1alpha1 is not supported"))
        #expect(refusal("clusters:\n- name: c\n  cluster:\n    server: https://x\n    proxy-url: http://proxy:3128\n")
                .contains("clusters[c].cluster.proxy-url is not supported"))
        #expect(refusal("clusters:\n- name: c\n  cluster: {}\n").contains("clusters[c].cluster.server is missing"))
        // Outside the YAML subset: the reader's error names the line.
        #expect(refusal("clusters:\n- name: c\n  cluster: &anchor\n    server: x\n").contains("line 3"))
        #expect(refusal("kind: Pod\n") == "kubeconfig kc: kind is Pod, not Config")
        // A secret never ends up in the message.
        #expect(!refusal(base + "    token: s3cr3t\n    password: hunter2\n").contains("hunter2"))
    }

    @Test func locatesLikeKubectlAndMergesFirstWins() throws {
        let present: Set<String> = ["/k1", "/k2", "/home/op/.kube/config", "/etc/kubernetes/admin.conf"]
        let exists = { (p: String) in present.contains(p) }
        #expect(try Kubeconfig.locate(flag: "/k2", environment: ["KUBECONFIG": "/k1"], exists: exists) == ["/k2"])
        #expect(try Kubeconfig.locate(flag: nil, environment: ["KUBECONFIG": "/k1:/nope:/k2", "HOME": "/home/op"], exists: exists) == ["/k1", "/k2"])
        #expect(try Kubeconfig.locate(flag: nil, environment: ["HOME": "/home/op"], exists: exists) == ["/home/op/.kube/config"])
        #expect(try Kubeconfig.locate(flag: nil, environment: ["HOME": "/nobody"], exists: exists) == ["/etc/kubernetes/admin.conf"])
        #expect(throws: KubernetesError.self) { try Kubeconfig.locate(flag: "/nope", environment: [:], exists: exists) }
        #expect(throws: KubernetesError.self) { try Kubeconfig.locate(flag: nil, environment: [:], exists: { _ in false }) }

        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kubeconfig-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "clusters:\n- name: c\n  cluster: {server: https://first}\ncurrent-context: ctx\n".write(toFile: folder + "/a", atomically: true, encoding: .utf8)
        try "clusters:\n- name: c\n  cluster: {server: https://second}\n- name: d\n  cluster: {server: https://d}\ncurrent-context: other\n"
            .write(toFile: folder + "/b", atomically: true, encoding: .utf8)
        let merged = try Kubeconfig.load(paths: [folder + "/a", folder + "/b"])
        #expect(merged.clusters["c"]?.server == "https://first")
        #expect(merged.clusters["d"]?.server == "https://d")
        #expect(merged.currentContext == "ctx")
    }
}

@Suite struct ExecCredentialTests {
    @Test func parsesTokenCertificateAndExpiry() throws {
        let out = #"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"abc","expirationTimestamp":"2030-01-02T03:04:05Z"}}"#
        let credential = try ExecCredential.parse(Array(out.utf8), apiVersion: "client.authentication.k8s.io/v1")
        #expect(credential.token == "abc")
        #expect(credential.expiration == Date(timeIntervalSince1970: 1_893_553_445))
        let certs = #"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientCertificateData":"C","clientKeyData":"K"}}"#
        let c = try ExecCredential.parse(Array(certs.utf8), apiVersion: "client.authentication.k8s.io/v1")
        #expect(c.clientCertificateData == "C" && c.clientKeyData == "K" && c.token == nil)
    }

    @Test func refusesBadPluginOutput() {
        let v1 = "client.authentication.k8s.io/v1"
        for (text, expected) in [
            ("not json", "not JSON"),
            (#"{"kind":"Pod","status":{"token":"a"}}"#, "not an ExecCredential"),
            (#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","status":{"token":"a"}}"#, "expected client.authentication.k8s.io/v1"),
            (#"{"kind":"ExecCredential"}"#, "no status"),
            (#"{"kind":"ExecCredential","status":{}}"#, "neither status.token"),
            (#"{"kind":"ExecCredential","status":{"clientCertificateData":"C"}}"#, "without clientKeyData"),
            (#"{"kind":"ExecCredential","status":{"token":"sekrit","expirationTimestamp":"tomorrow"}}"#, "not RFC 3339"),
        ] {
            #expect(throws: KubernetesError.self) { try ExecCredential.parse(Array(text.utf8), apiVersion: v1) }
            do { _ = try ExecCredential.parse(Array(text.utf8), apiVersion: v1) } catch {
                #expect(error.description.contains(expected), "\(text)")
                #expect(!error.description.contains("sekrit"))
            }
        }
    }

    /// A real plugin process: gets the kubeconfig's env and KUBERNETES_EXEC_INFO, its token is cached until refresh.
    @Test func runsThePluginWithEnvAndExecInfo() throws {
        let script = #"""
            case "$KUBERNETES_EXEC_INFO" in *'"interactive":false'*) ;; *) exit 7;; esac
            case "$KUBERNETES_EXEC_INFO" in *'"server":"https://x:6443"'*) ;; *) exit 8;; esac
            n=$(cat "$COUNTER" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$COUNTER"
            printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"tok-%s-%s"}}' "$TEAM" "$n"
            """#
        let counter = FileManager.default.temporaryDirectory.appendingPathComponent("exec-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: counter) }
        var config = ExecCredentialConfig(apiVersion: "client.authentication.k8s.io/v1", command: "/bin/sh")
        config.args = ["-c", script]
        config.env = ["TEAM": "blue", "COUNTER": counter]
        config.provideClusterInfo = true
        let plugin = ExecCredentialPlugin(config: config, cluster: KubeconfigCluster(server: "https://x:6443"))
        #expect(try plugin.credential(refresh: false).token == "tok-blue-1")
        #expect(try plugin.credential(refresh: false).token == "tok-blue-1")    // cached (no expiry given)
        #expect(try plugin.credential(refresh: true).token == "tok-blue-2")     // after a 401
        config.args = ["-c", "exit 3"]
        #expect(throws: KubernetesError.unauthorized("exec credential plugin /bin/sh failed with exit status 3")) {
            try ExecCredentialPlugin(config: config, cluster: KubeconfigCluster(server: "https://x")).credential(refresh: false)
        }
    }

    @Test func percentEncodesContinueTokens() {
        #expect(percentEncoded("eyJ2Ijo+/=") == "eyJ2Ijo%2B%2F%3D")
        #expect(percentEncoded("a-b_c.d~") == "a-b_c.d~")
    }
}
