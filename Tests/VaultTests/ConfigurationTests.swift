import Foundation
import Testing
@testable import Vault

/// A temporary directory with a few credential files, removed on deinit.
final class TempFiles {
    let dir: String
    init() {
        dir = NSTemporaryDirectory() + "kekd-vault-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    func write(_ name: String, _ text: String) -> String {
        let path = dir + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        return path
    }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
}

@Suite struct ConfigurationTests {
    @Test func tokenFileConfigurationWithDefaults() throws {
        let files = TempFiles()
        let token = files.write("token", "hvs.secret\n")
        let config = try VaultConfiguration.parse(["vault-addr": "https://vault.example:8200", "vault-key": "kek", "vault-token-file": token])
        #expect(config.endpoint == (try Endpoint(url: "https://vault.example:8200")))
        #expect(config.transitMount == "transit" && config.keyName == "kek" && config.namespace == nil)
        #expect(config.auth == .tokenFile(path: token))
        #expect(config.connectTimeout == 1 && config.requestTimeout == 2.5 && config.keyPollInterval == 30)
    }

    @Test func everyOption() throws {
        let files = TempFiles()
        let role = files.write("role", "r"), secret = files.write("secret", "s"), ca = files.write("ca.pem", "x")
        let cert = files.write("c.pem", "x"), key = files.write("c.key", "x")
        let config = try VaultConfiguration.parse([
            "vault-addr": "https://[::1]:8200/", "vault-key": "k8s-kek", "vault-transit-mount": "kms/transit/", "vault-namespace": "ns1/team/",
            "vault-approle-role-id-file": role, "vault-approle-secret-id-file": secret, "vault-approle-mount": "approle-kekd",
            "vault-ca-file": ca, "vault-client-cert": cert, "vault-client-key": key, "vault-tls-server-name": "vault.internal",
            "vault-connect-timeout": "500ms", "vault-request-timeout": "2s", "vault-key-poll-interval": "1m",
            "vault-local-kek-max-encryptions": "1000", "vault-local-kek-max-age": "1h", "vault-cache-size": "50",
        ])
        #expect(config.endpoint.host == "::1" && config.endpoint.port == 8200)
        #expect(config.transitMount == "kms/transit" && config.namespace == "ns1/team/")
        #expect(config.auth == .appRole(roleIDFile: role, secretIDFile: secret, mount: "approle-kekd"))
        #expect(config.tls == TLSSettings(caFile: ca, clientCertFile: cert, clientKeyFile: key, serverName: "vault.internal"))
        #expect(config.connectTimeout == 0.5 && config.requestTimeout == 2 && config.keyPollInterval == 60)
        #expect(config.localKEKMaxEncryptions == 1000 && config.localKEKMaxAge == 3600 && config.cacheSize == 50)
        let certAuth = try VaultConfiguration.parse(["vault-addr": "https://v:1", "vault-key": "k", "vault-auth": "cert",
                                                      "vault-client-cert": cert, "vault-client-key": key, "vault-cert-auth-role": "kekd"])
        #expect(certAuth.auth == .cert(mount: "cert", role: "kekd"))
        #expect(Set(VaultConfiguration.flagNames).count == VaultConfiguration.flagNames.count)
    }

    @Test func invalidConfigurationsGetOneLineErrors() {
        let files = TempFiles()
        let token = files.write("token", "t")
        let base = ["vault-addr": "https://v:8200", "vault-key": "k", "vault-token-file": token]
        let cases: [([String: String], String)] = [
            ([:], "--vault-addr is required"),
            (["vault-addr": "https://v"], "--vault-key is required"),
            (base.merging(["vault-addr": "http://v:8200"]) { $1 }, "must use https://"),
            (base.merging(["vault-addr": "ftp://v"]) { $1 }, "must start with https://"),
            (base.merging(["vault-addr": "https://v:99999"]) { $1 }, "bad port"),
            (base.merging(["vault-addr": "https://user@v"]) { $1 }, "scheme://host"),
            (base.merging(["vault-key": "a/b"]) { $1 }, "not a valid Transit key name"),
            (base.merging(["vault-token-file": files.dir + "/missing"]) { $1 }, "cannot read"),
            (base.merging(["vault-transit-mount": "../x"]) { $1 }, "not a valid mount path"),
            (base.merging(["vault-request-timeout": "5s"]) { $1 }, "not a duration"),
            (base.merging(["vault-connect-timeout": "fast"]) { $1 }, "not a duration"),
            (base.merging(["vault-cache-size": "0"]) { $1 }, "not a whole number"),
            (base.merging(["vault-auth": "kubernetes"]) { $1 }, "must be token, approle or cert"),
            (base.merging(["vault-client-cert": token]) { $1 }, "go together"),
            (base.merging(["vault-bogus": "1"]) { $1 }, "unknown Vault option --vault-bogus"),
            (["vault-addr": "https://v", "vault-key": "k"], "no Vault credentials"),
            (["vault-addr": "https://v", "vault-key": "k", "vault-approle-role-id-file": token], "needs both"),
        ]
        for (flags, fragment) in cases {
            do {
                _ = try VaultConfiguration.parse(flags)
                Issue.record("accepted \(flags)")
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(fragment), "\(error.message) should mention \(fragment)")
                #expect(!error.message.contains("\n"))
            }
        }
        let insecure = try? VaultConfiguration.parse(base.merging(["vault-addr": "http://127.0.0.1:8200", "vault-insecure-allow-http": "true"]) { $1 })
        #expect(insecure?.endpoint.secure == false)
    }
}
