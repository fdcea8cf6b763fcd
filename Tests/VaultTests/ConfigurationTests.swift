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
    func write(_ name: String, _ text: String, mode: Int = 0o600) -> String {
        let path = dir + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
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

    /// Issue 15 item 11: credential files follow the key file's rules (mode and owner); the error names the file and
    /// never its contents.
    @Test func credentialFilesReadableByOthersAreRefused() {
        let files = TempFiles()
        let content = "hvs.must-not-appear-in-errors"
        let open = files.write("open-token", content, mode: 0o644)
        let groupSecret = files.write("group-secret-id", content, mode: 0o640)
        let role = files.write("role-id", "role", mode: 0o644)  // an identifier, not a secret: any mode
        let cert = files.write("c.pem", "x"), openKey = files.write("c.key", content, mode: 0o604)
        let base = ["vault-addr": "https://v:8200", "vault-key": "k"]
        let cases: [([String: String], String)] = [
            (base.merging(["vault-token-file": open]) { $1 }, "--vault-token-file: Vault token file \(open) has mode 0644"),
            (base.merging(["vault-approle-role-id-file": role, "vault-approle-secret-id-file": groupSecret]) { $1 },
             "--vault-approle-secret-id-file: AppRole secret-id file \(groupSecret) has mode 0640"),
            (base.merging(["vault-auth": "cert", "vault-client-cert": cert, "vault-client-key": openKey]) { $1 },
             "--vault-client-key: Vault client key file \(openKey) has mode 0604"),
            (base.merging(["vault-token-file": files.dir]) { $1 }, "is not a regular file"),
        ]
        for (flags, fragment) in cases {
            do {
                _ = try VaultConfiguration.parse(flags)
                Issue.record("accepted \(flags)")
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(fragment), "\(error.message) should mention \(fragment)")
                #expect(!error.message.contains(content) && !error.message.contains("\n"))
            }
        }
        let privateToken = files.write("token", content)
        #expect((try? VaultConfiguration.parse(base.merging(["vault-token-file": privateToken]) { $1 })) != nil)
    }

    @Test func ownerMustBeKekdOrRoot() throws {
        var st = stat()
        st.st_mode = S_IFREG | 0o600
        st.st_uid = geteuid()
        #expect(CredentialFile.problem(st, path: "/t", what: "Vault token file") == nil)
        st.st_uid = 0
        #expect(CredentialFile.problem(st, path: "/t", what: "Vault token file") == nil)
        st.st_uid = geteuid() == 4242 ? 4343 : 4242
        let problem = CredentialFile.problem(st, path: "/t", what: "Vault token file")
        #expect(problem?.contains("Vault token file /t is owned by uid \(st.st_uid)") == true, "\(problem ?? "accepted")")
    }

    /// A token file that becomes readable by others after startup is refused when it is next read.
    @Test func aSecretFileThatBecameOpenIsRefusedOnReRead() throws {
        let files = TempFiles()
        let path = files.write("token", "hvs.secret-value\n")
        let file = SecretFile(path: path, what: "Vault token file")
        #expect(try file.read() == Array("hvs.secret-value".utf8))
        #expect(chmod(path, 0o644) == 0)
        do {
            _ = try file.read()
            Issue.record("a 0644 token file was read")
        } catch {
            #expect(error.message.contains("Vault token file \(path) has mode 0644") && !error.message.contains("secret-value"))
        }
        #expect(chmod(path, 0o600) == 0)
        #expect(try file.read() == Array("hvs.secret-value".utf8))
    }
}
