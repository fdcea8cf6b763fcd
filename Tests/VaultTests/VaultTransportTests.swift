import Foundation
import KMS
import Synchronization
import Logging
import Testing
@testable import Vault

/// TLS, auth, retries and the breaker against fake_vault.py over real TLS.
@Suite(.serialized, .enabled(if: FakeVault.available, "needs KEKD_PYTHON for fake_vault.py")) struct VaultTransportTests {
    /// A keyring whose background loop is off, so a test drives `maintain()` itself.
    private func manualKeyring(_ vault: FakeVault, _ extra: [String: String] = [:], auth: String = "token") throws -> VaultKeyring {
        try VaultKeyring(configuration: try VaultConfiguration.parse(vault.flags(extra, auth: auth)), log: Logger { _ in }, startBackground: false)
    }

    @Test func eachAuthMethodRoundTrips() throws {
        let vault = try FakeVault()
        for auth in ["token", "approle", "cert"] {
            let ring = try vault.keyring(auth: auth)
            defer { ring.close() }
            let seed = Array(0..<32).map { UInt8($0) }
            let envelope = try ring.encrypt(seed)
            // A second, cold keyring must ask Vault to unwrap.
            let cold = try vault.keyring(auth: auth)
            defer { cold.close() }
            #expect(try cold.decrypt(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations) == seed, "\(auth)")
        }
        let stats = try vault.stats()
        #expect(stats.byOp["login"] == 4, "two AppRole and two cert logins")
    }

    @Test func certLoginWithoutAClientCertificateIsRefused() throws {
        let vault = try FakeVault()
        var config = try VaultConfiguration.parse(vault.flags(auth: "cert"))
        config.tls.clientCertFile = nil
        config.tls.clientKeyFile = nil
        let ring = try VaultKeyring(configuration: config, log: Logger { _ in }, startBackground: false)
        ring.maintain()
        #expect(!ring.health().canEncrypt)
        #expect(ring.health().detail.contains("client certificate must be supplied"))
    }

    @Test func aReplacedClientCertificateIsUsedWithoutRestart() throws {
        let vault = try FakeVault()
        let files = TempFiles()
        func install(_ prefix: String) throws {
            for ext in ["pem", "key"] {
                let data = try Data(contentsOf: URL(fileURLWithPath: vault.string("\(prefix)_\(ext)")))
                try data.write(to: URL(fileURLWithPath: files.dir + "/client.\(ext)"), options: .atomic)
                _ = chmod(files.dir + "/client.\(ext)", 0o600)  // a client key must be private to kekd
            }
        }
        try install("other_client")  // a certificate the server does not trust
        let ring = try manualKeyring(vault, ["vault-client-cert": files.dir + "/client.pem",
                                             "vault-client-key": files.dir + "/client.key"], auth: "cert")
        ring.maintain()
        #expect(!ring.health().canEncrypt, "\(ring.health().detail)")
        try install("client")  // the operator renews the certificate on disk
        Thread.sleep(forTimeInterval: 1.1)  // let the circuit breaker's open period pass
        ring.maintain()
        #expect(ring.health().canEncrypt, "\(ring.health().detail)")
    }

    @Test func wrongCAAndWrongHostNameAreRefused() throws {
        let vault = try FakeVault()
        let wrongCA = try manualKeyring(vault, ["vault-ca-file": vault.string("other_ca_pem")])
        wrongCA.maintain()
        #expect(!wrongCA.health().canEncrypt)
        #expect(wrongCA.health().detail.contains("certificate verification failed"), "\(wrongCA.health().detail)")
        let wrongName = try manualKeyring(vault, ["vault-tls-server-name": "vault.other.example"])
        wrongName.maintain()
        #expect(wrongName.health().detail.contains("certificate verification failed"), "\(wrongName.health().detail)")
        #expect(try vault.stats().requests == 0, "no request may reach an unverified server")
        // The same server by a name its certificate carries is fine.
        let byName = try manualKeyring(vault, ["vault-addr": vault.string("localhost_addr")])
        byName.maintain()
        #expect(byName.health().canEncrypt, "\(byName.health().detail)")
    }

    @Test func retriesTransientErrorsThenSucceeds() throws {
        let vault = try FakeVault()
        try vault.call("config", ["rules": [["path": "transit/keys", "status": 503, "count": 2],
                                            ["path": "auth/token/lookup-self", "drop": true, "count": 1]]])
        let ring = try manualKeyring(vault)
        ring.maintain()
        #expect(ring.health().canEncrypt, "\(ring.health().detail)")
        let stats = try vault.stats()
        #expect(stats.byOp["read_key"] == 3 && stats.byOp["lookup_self"] == 2)
    }

    @Test func aSealedVaultIsRetriedWithinTheDeadlineThenUnavailable() throws {
        let vault = try FakeVault()
        let warm = try vault.keyring()
        defer { warm.close() }
        let envelope = try warm.encrypt([4, 2])
        let cold = try vault.keyring()
        defer { cold.close() }
        try vault.call("config", ["sealed": true])
        try vault.resetStats()
        let started = Date()
        do {
            _ = try cold.decrypt(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations)
            Issue.record("decrypt from a sealed Vault succeeded")
        } catch {
            #expect(error.code == .unavailable && error.message.contains("sealed"), "\(error.message)")
        }
        #expect(Date().timeIntervalSince(started) < 2, "backoff stays inside the deadline")
        #expect(try vault.stats().byOp["decrypt"] == 3, "three attempts with backoff")
        try vault.call("config", ["sealed": false, "rules": [["path": "transit/decrypt", "status": 429, "count": -1, "rate": 0.3]]])
        // With a 30 % error rate, retries make nearly every call succeed (a call fails only if 3 attempts do: 2.7 %).
        var ok = 0
        for _ in 0..<10 {
            let fresh = try vault.keyring()
            if (try? fresh.decrypt(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations)) == [4, 2] { ok += 1 }
            fresh.close()
        }
        #expect(ok >= 7)
    }

    @Test func doesNotRetryOtherClientErrors() throws {
        let vault = try FakeVault()
        let warm = try vault.keyring()
        defer { warm.close() }
        let envelope = try warm.encrypt(Array(repeating: 7, count: 32))
        let cold = try vault.keyring()
        defer { cold.close() }
        try vault.call("config", ["rules": [["path": "transit/decrypt", "status": 400, "count": 5]]])
        try vault.resetStats()
        #expect(throws: KMSError.self) {
            try cold.decrypt(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations)
        }
        do {
            _ = try cold.decrypt(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations)
        } catch {
            #expect(error.code == .invalidArgument)
        }
        #expect(try vault.stats().byOp["decrypt"] == 2, "one request per Decrypt, no retries")
    }

    @Test func outageCostsOneTimeoutThenFailsFastAndRecovers() throws {
        let vault = try FakeVault()
        let warm = try vault.keyring()
        defer { warm.close() }
        let foreign = try (0..<2).map { _ in
            try warm.renewLocalKEK()
            return try warm.encrypt(Array(repeating: 1, count: 32))
        }
        let logs = LogLines()
        let ring = try vault.keyring(["vault-request-timeout": "1s"], log: logs.sink)
        defer { ring.close() }
        let own = try ring.encrypt(Array(repeating: 2, count: 32))
        let keyID = ring.health().keyID
        try vault.call("config", ["delay_ms": 4000])  // Vault hangs

        var started = Date()
        #expect(throws: KMSError.self) { try ring.decrypt(ciphertext: foreign[0].ciphertext, keyID: foreign[0].keyID, annotations: foreign[0].annotations) }
        let first = Date().timeIntervalSince(started)
        #expect(first >= 0.9 && first < 2.0, "first miss waits one request timeout (\(first)s)")
        started = Date()
        do {
            _ = try ring.decrypt(ciphertext: foreign[1].ciphertext, keyID: foreign[1].keyID, annotations: foreign[1].annotations)
            Issue.record("decrypt during outage succeeded")
        } catch {
            #expect(error.code == .unavailable)
        }
        #expect(Date().timeIntervalSince(started) < 0.3, "second miss fails fast")
        // Encrypt, cached Decrypt and Status keep working.
        let during = try ring.encrypt(Array(repeating: 3, count: 32))
        #expect(during.keyID == keyID && ring.health().canEncrypt && ring.health().keyID == keyID)
        #expect(try ring.decrypt(ciphertext: own.ciphertext, keyID: own.keyID, annotations: own.annotations) == Array(repeating: 2, count: 32))

        try vault.call("config", ["delay_ms": 0])
        let deadline = Date(timeIntervalSinceNow: 10)
        var recovered: [UInt8]? = nil
        while recovered == nil && Date() < deadline {
            recovered = try? ring.decrypt(ciphertext: foreign[1].ciphertext, keyID: foreign[1].keyID, annotations: foreign[1].annotations)
            if recovered == nil { Thread.sleep(forTimeInterval: 0.2) }
        }
        #expect(recovered == Array(repeating: 1, count: 32), "no restart needed after Vault returns")
        // The outage shows in the log once when it starts and once when it ends, not once per failed call.
        let outageLines = logs.all.filter { $0.hasPrefix("warn: Vault problem") }
        #expect(outageLines.count == 1, "\(logs.all)")
        #expect(logs.all.last == "info: Vault reachable again")
    }

    @Test func renewsAtTwoThirdsTTLAndLogsInAgainAtMaxTTL() throws {
        let vault = try FakeVault()
        try vault.call("config", ["approle_token_ttl": 3, "approle_token_max_ttl": 4])
        let ring = try vault.keyring(auth: "approle")
        defer { ring.close() }
        let t0 = Date()
        while ring.tokens.renewals.load(ordering: .relaxed) == 0 && Date().timeIntervalSince(t0) < 5 { Thread.sleep(forTimeInterval: 0.05) }
        let renewedAfter = Date().timeIntervalSince(t0)
        #expect(renewedAfter > 1.5 && renewedAfter < 2.8, "renewal near 2/3 of a 3 s TTL, was \(renewedAfter)s")
        // Renewal is capped at the max TTL (4 s), so the keyring logs in again before the token dies.
        while ring.tokens.logins.load(ordering: .relaxed) < 2 && Date().timeIntervalSince(t0) < 3.5 { Thread.sleep(forTimeInterval: 0.02) }
        #expect(ring.tokens.logins.load(ordering: .relaxed) == 2)
        // Calls keep succeeding past the first token's max TTL (4 s): no failed call across renew and re-login.
        var calls = 0
        while Date().timeIntervalSince(t0) < 5 {
            try ring.renewLocalKEK()  // a Vault encrypt with whatever token is current
            calls += 1
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(calls > 10 && ring.health().canEncrypt)
        #expect(ring.tokens.logins.load(ordering: .relaxed) >= 3)
    }

    @Test func logsInAgainAfterRevocationButTokenFileGivesPermissionDenied() throws {
        let vault = try FakeVault()
        let approle = try vault.keyring(auth: "approle")
        defer { approle.close() }
        let tokenRing = try vault.keyring(auth: "token")
        defer { tokenRing.close() }
        try vault.call("revoke_all")
        try approle.renewLocalKEK()
        #expect(approle.tokens.logins.load(ordering: .relaxed) == 2)
        do {
            try tokenRing.renewLocalKEK()
            Issue.record("revoked file token still worked")
        } catch {
            #expect(error.code == .permissionDenied)
        }
        // The operator writes a new token into the file: picked up without a restart.
        let fresh = try vault.call("token", ["ttl": 0])["token"] as? String ?? ""
        Thread.sleep(forTimeInterval: 0.02)
        _ = FileManager.default.createFile(atPath: vault.string("token_file"), contents: Data((fresh + "\n").utf8),
                                          attributes: [.posixPermissions: 0o600])
        try tokenRing.renewLocalKEK()
    }

    @Test func mountsAndNamespaceAreConfigurable() throws {
        let vault = try FakeVault(extraArguments: ["--transit-mount", "kms/transit", "--approle-mount", "kekd-approle", "--key", "k8s"])
        let ring = try vault.keyring(["vault-transit-mount": "kms/transit", "vault-approle-mount": "kekd-approle",
                                      "vault-namespace": "team-a/"], auth: "approle")
        defer { ring.close() }
        let e = try ring.encrypt([1, 2])
        let cold = try vault.keyring(["vault-transit-mount": "kms/transit", "vault-approle-mount": "kekd-approle",
                                      "vault-namespace": "team-a/"], auth: "approle")
        defer { cold.close() }
        #expect(try cold.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations) == [1, 2])
        #expect(try vault.stats().namespaces == ["team-a/"], "every request carries X-Vault-Namespace")
    }

    @Test func aRotatedSecretIDFileIsReadAtTheNextLogin() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring(auth: "approle")
        defer { ring.close() }
        try vault.call("config", ["secret_id": "rotated-secret-id"])
        try vault.call("revoke_all")
        do {
            try ring.renewLocalKEK()
            Issue.record("login with the old secret-id succeeded")
        } catch {
            #expect(error.code == .permissionDenied && error.message.contains("invalid role or secret ID"), "\(error.message)")
        }
        Thread.sleep(forTimeInterval: 0.02)
        _ = FileManager.default.createFile(atPath: vault.string("secret_id_file"), contents: Data("rotated-secret-id\n".utf8),
                                          attributes: [.posixPermissions: 0o600])
        try ring.renewLocalKEK()
    }

    @Test func keepAliveReusesConnectionsAndChunkedBodiesWork() throws {
        let vault = try FakeVault()
        try vault.call("config", ["chunked": true])
        let ring = try vault.keyring()
        defer { ring.close() }
        for _ in 0..<20 { try ring.renewLocalKEK() }
        #expect(ring.client.http.connectionsOpened == 1)
        // A server that silently closes idle connections: the pool notices and reconnects, no call fails.
        try vault.call("config", ["silent_close": true])
        for _ in 0..<10 {
            try ring.renewLocalKEK()
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(ring.client.http.connectionsOpened >= 10)
    }

    @Test func telemetryReportsTokenLifetimeAndCircuitState() throws {
        let vault = try FakeVault(extraArguments: ["--token-ttl", "3600"])
        let ring = try manualKeyring(vault)
        #expect(ring.telemetry().tokenExpiry == nil, "no token before the first login")
        ring.maintain()
        let t = ring.telemetry()
        #expect(!t.circuitOpen)
        let lease = try #require(t.tokenLease)
        #expect(abs(lease - 3600) <= 2)
        let expiry = try #require(t.tokenExpiry)
        #expect(abs(expiry - (Date().timeIntervalSince1970 + lease)) < 30)
        // Nothing listens on port 1: the first call that gets no reply opens the breaker.
        let dead = try manualKeyring(vault, ["vault-addr": "https://127.0.0.1:1"])
        dead.maintain()
        #expect(dead.telemetry().circuitOpen)
        #expect(dead.telemetry().tokenExpiry == nil)
    }
}

@Suite struct VaultReplyTests {
    /// An error message is one line (log lines, audit records, grpc-message), whatever Vault's text holds.
    @Test func vaultsMultiLineErrorsBecomeOneBoundedLine() {
        let reply = VaultReply(status: 403, json: ["errors": ["1 error occurred:\n\t* permission denied\n\n", "\u{7}second\r"]])
        #expect(reply.errorText == "1 error occurred: * permission denied; second")
        #expect(VaultReply(status: 502, json: .object([:])).errorText == "HTTP 502")
        let long = VaultReply.oneLine(String(repeating: "ab\n", count: 200), limit: 300)
        #expect(long.count == 299 && long.hasPrefix("ab ab ") && long.hasSuffix(" ab"))
        #expect(VaultReply.oneLine("  ünïcode\u{85}kept  ", limit: 50) == "ünïcode kept")
    }
}
