import Crypto
import Foundation
import KMS
import GRPCCodes
import Synchronization
import Logging
import Testing
@testable import Vault

@Suite struct VaultEnvelopeTests {
    @Test func wrappedKEKAnnotationIsParsedStrictly() {
        #expect(VaultKeyring.parseWrapped(Array("vault:v12:QUJD".utf8))?.1 == 12)
        for bad in ["vault:v0:QUJD", "vault:v:QUJD", "vault:v1:", "vault:v1:QU JD", "vault:vx:QUJD", "vaulT:v1:QUJD",
                    "vault:v1234567890:QUJD", "vault:v1:" + String(repeating: "A", count: 600)] {
            #expect(VaultKeyring.parseWrapped(Array(bad.utf8)) == nil, "\(bad.prefix(30))")
        }
    }

    @Test func aadIsUnambiguous() {
        let a = VaultKeyring.aad(keyID: "k", annotations: ["a.io": [1, 2], "b.io": [3]])
        #expect(a == VaultKeyring.aad(keyID: "k", annotations: ["b.io": [3], "a.io": [1, 2]]))
        #expect(a != VaultKeyring.aad(keyID: "k", annotations: ["a.io": [1], "b.io": [2, 3]]))
        #expect(a != VaultKeyring.aad(keyID: "k2", annotations: ["a.io": [1, 2], "b.io": [3]]))
    }

    @Test func keyIDDependsOnEveryIdentityField() throws {
        let base = try VaultConfiguration(address: "https://vault:8200", keyName: "k", auth: .tokenFile(path: "/t"))
        var ns = base; ns.namespace = "team/"
        var mount = base; mount.transitMount = "transit2"
        var addr = base; addr.endpoint = try Endpoint(url: "https://vault2:8200")
        let ids = [VaultKeyring.keyID(config: base, version: 1, created: 100), VaultKeyring.keyID(config: base, version: 2, created: 100),
                   VaultKeyring.keyID(config: base, version: 1, created: 101), VaultKeyring.keyID(config: ns, version: 1, created: 100),
                   VaultKeyring.keyID(config: mount, version: 1, created: 100), VaultKeyring.keyID(config: addr, version: 1, created: 100)]
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.utf8.count <= 64 && $0.hasPrefix("kekd-vault-") })
        #expect(ids[0] == VaultKeyring.keyID(config: base, version: 1, created: 100))
    }
}

/// The hierarchy against fake_vault.py: call counts, storms, rotation, recreation, tampering.
@Suite(.serialized, .enabled(if: FakeVault.available, "needs KEKD_PYTHON for fake_vault.py")) struct VaultKeyringTests {
    @Test func encryptAndStatusMakeZeroVaultCalls() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring()
        defer { ring.close() }
        try vault.resetStats()
        var envelopes: [VaultEnvelope] = []
        for i in 0..<1000 { envelopes.append(try ring.encrypt(Array(repeating: UInt8(i & 0xff), count: 32))) }
        for _ in 0..<1000 { #expect(ring.health().canEncrypt) }
        for e in envelopes.prefix(100) { _ = try ring.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations) }
        #expect(try vault.stats().requests == 0)
        #expect(envelopes[0].ciphertext.count <= 1024 && envelopes[0].keyID.utf8.count <= 1024)
        #expect(envelopes[0].annotations.keys.sorted() == [VaultKeyring.localKEKAnnotation])
    }

    /// A decrypt-only keyring (another backend encrypts) never has Vault wrap a local KEK, is ready once the key is
    /// read, refuses to encrypt, and decrypts what an encrypting keyring wrote.
    @Test func aDecryptOnlyKeyringNeverEncryptsWithVault() throws {
        let vault = try FakeVault()
        let writer = try vault.keyring()
        let seed = Array(repeating: UInt8(5), count: 32)
        let envelope = try writer.encrypt(seed)
        writer.close()
        try vault.resetStats()
        var configuration = try VaultConfiguration.parse(vault.flags())
        configuration.decryptOnly = true
        let reader = try VaultKeyring(configuration: configuration, log: Logger { _ in }, maintenanceTick: 0.05)
        defer { reader.close() }
        #expect(reader.waitUntilReady(timeout: 10))
        let health = reader.health()
        #expect(health.canDecrypt && !health.canEncrypt && health.keyID.isEmpty)
        #expect(throws: KMSError.self) { try reader.encrypt(seed) }
        #expect(try reader.decrypt(ciphertext: envelope.ciphertext, keyID: envelope.keyID, annotations: envelope.annotations) == seed)
        Thread.sleep(forTimeInterval: 0.3)  // several maintenance ticks: still no local KEK, and no poll every tick
        let stats = try vault.stats()
        #expect(stats.byOp["encrypt", default: 0] == 0)
        #expect(stats.byOp["read_key", default: 0] == 1)
    }

    @Test func coldDecryptStormIsBatchedAndSingleFlighted() throws {
        let vault = try FakeVault()
        let writer = try vault.keyring()
        defer { writer.close() }
        var envelopes: [(VaultEnvelope, [UInt8])] = []
        for i in 0..<50 {
            try writer.renewLocalKEK()
            let seed = (0..<32).map { UInt8(truncatingIfNeeded: $0 * 7 + i) }
            envelopes.append((try writer.encrypt(seed), seed))
        }
        let inputs = envelopes
        let hits = Counter(), misses = Counter()
        let reader = try vault.keyring(onCache: { hit in (hit ? hits : misses).add() })
        defer { reader.close() }
        try vault.resetStats()
        let threads = 200, perThread = 10
        let failures = Counter()
        let start = DispatchSemaphore(value: 0), done = DispatchGroup()
        for t in 0..<threads {
            done.enter()
            Thread.detachNewThread {
                start.wait()
                for k in 0..<perThread {
                    let (e, seed) = inputs[(t * perThread + k) % inputs.count]
                    let plain = try? reader.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations)
                    if plain != seed { failures.add() }
                }
                done.leave()
            }
        }
        for _ in 0..<threads { start.signal() }
        #expect(done.wait(timeout: .now() + 30) == .success)
        let stats = try vault.stats()
        let decryptCalls = stats.byOp["decrypt"] ?? 0
        print("decrypt storm: \(threads * perThread) Decrypts of 50 cold local KEKs -> \(stats.requests) Vault requests (\(decryptCalls) decrypt)")
        #expect(failures.value == 0)
        #expect(decryptCalls >= 1 && decryptCalls <= 20, "2000 Decrypts must cost a handful of Vault calls, not one per local KEK (50)")
        #expect(stats.requests <= 22)
        #expect(hits.value + misses.value == threads * perThread)
    }

    @Test func vaultRotationChangesKeyIDAndOldCiphertextsStillDecrypt() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring(["vault-key-poll-interval": "100ms"])
        defer { ring.close() }
        let before = ring.health().keyID
        let old = try ring.encrypt(Array(repeating: 9, count: 32))
        #expect(try vault.vault("POST", "transit/keys/kekd/rotate") == 204)
        let deadline = Date(timeIntervalSinceNow: 5)
        while ring.health().keyID == before && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        let after = ring.health().keyID
        #expect(after != before && after.hasSuffix("-v2") && before.hasSuffix("-v1"))
        let new = try ring.encrypt(Array(repeating: 8, count: 32))
        #expect(new.keyID == after)
        let cold = try vault.keyring()
        defer { cold.close() }
        #expect(try cold.decrypt(ciphertext: old.ciphertext, keyID: old.keyID, annotations: old.annotations) == Array(repeating: 9, count: 32))
        #expect(try cold.decrypt(ciphertext: new.ciphertext, keyID: new.keyID, annotations: new.annotations) == Array(repeating: 8, count: 32))
        #expect(try ring.decrypt(ciphertext: old.ciphertext, keyID: old.keyID, annotations: old.annotations) == Array(repeating: 9, count: 32))
    }

    @Test func deletedKeyStopsEncryptionAndARecreatedKeyGetsANewKeyID() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring(["vault-key-poll-interval": "100ms"])
        defer { ring.close() }
        let first = ring.health().keyID
        let old = try ring.encrypt(Array(repeating: 5, count: 32))
        #expect(try vault.vault("DELETE", "transit/keys/kekd") == 204)
        var deadline = Date(timeIntervalSinceNow: 5)
        while ring.health().canEncrypt && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        #expect(!ring.health().canEncrypt && ring.health().detail.contains("does not exist"))
        #expect(throws: KMSError.self) { try ring.encrypt([1]) }
        // The 404 dropped every cached local KEK: what was written under the deleted key no longer decrypts.
        #expect(throws: KMSError.self) { try ring.decrypt(ciphertext: old.ciphertext, keyID: old.keyID, annotations: old.annotations) }
        #expect(try vault.vault("POST", "transit/keys/kekd") == 204)
        deadline = Date(timeIntervalSinceNow: 5)
        while !ring.health().canEncrypt && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        let second = ring.health().keyID
        #expect(ring.health().canEncrypt && second != first && second.hasSuffix("-v1") && first.hasSuffix("-v1"))
    }

    @Test func localKEKIsRenewedAfterItsEncryptionLimitWithTheSameKeyID() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring(["vault-local-kek-max-encryptions": "5"])
        defer { ring.close() }
        let first = try (0..<5).map { _ in try ring.encrypt([1]) }
        #expect(Set(first.map { $0.annotations[VaultKeyring.localKEKAnnotation] ?? [] }).count == 1)
        let deadline = Date(timeIntervalSinceNow: 5)
        var next = try ring.encrypt([2])
        while next.annotations == first[0].annotations && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.02)
            next = try ring.encrypt([2])
        }
        #expect(next.annotations != first[0].annotations, "a new local KEK after 5 encryptions")
        #expect(next.keyID == first[0].keyID, "same Vault key version, same key_id")
        for e in first + [next] { _ = try ring.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations) }
    }

    @Test func anotherAddressSpellingChangesKeyIDButStillDecrypts() throws {
        let vault = try FakeVault()
        let byIP = try vault.keyring()
        defer { byIP.close() }
        let byName = try vault.keyring(["vault-addr": vault.string("localhost_addr")])
        defer { byName.close() }
        let e = try byIP.encrypt([7, 7])
        #expect(byName.health().keyID != e.keyID && byName.health().keyID.hasSuffix("-v1"))
        #expect(try byName.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations) == [7, 7])
        // A well-formed key_id that was not the one sealed into this envelope fails authentication.
        do {
            _ = try byName.decrypt(ciphertext: e.ciphertext, keyID: byName.health().keyID, annotations: e.annotations)
            Issue.record("a swapped key_id was accepted")
        } catch {
            #expect(error.code == .invalidArgument && error.message.contains("failed authentication"))
        }
        #expect(byName.accepts(keyID: e.keyID, version: 1) && !byName.accepts(keyID: e.keyID, version: 2))
        #expect(!VaultKeyring.isOwnKeyIDFormat("kekd-vault-XYZ-v1", version: 1))
        #expect(!VaultKeyring.isOwnKeyIDFormat(String(e.keyID.dropLast(4)) + "-v1", version: 1))
    }

    @Test func cachedPathThroughput() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring()
        defer { ring.close() }
        let seed = [UInt8](repeating: 0x5a, count: 32)
        let n = 20_000
        try vault.resetStats()
        var started = Date()
        var envelopes: [VaultEnvelope] = []
        envelopes.reserveCapacity(n)
        for _ in 0..<n { envelopes.append(try ring.encrypt(seed)) }
        let encryptRate = Double(n) / Date().timeIntervalSince(started)
        started = Date()
        for e in envelopes { _ = try ring.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations) }
        let decryptRate = Double(n) / Date().timeIntervalSince(started)
        print("vault keyring (this build): \(Int(encryptRate)) Encrypt/s, \(Int(decryptRate)) cached Decrypt/s, Vault requests: \(try vault.stats().requests)")
        #expect(encryptRate > 2000 && decryptRate > 2000)
    }

    @Test func tamperedOrForeignInputIsRejectedBeforeVault() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring()
        defer { ring.close() }
        let e = try ring.encrypt(Array(repeating: 4, count: 32))
        try vault.resetStats()
        func code(_ ciphertext: [UInt8], _ keyID: String, _ annotations: [String: [UInt8]]) -> GRPCStatusCode? {
            do { _ = try ring.decrypt(ciphertext: ciphertext, keyID: keyID, annotations: annotations); return nil } catch { return error.code }
        }
        var flipped = e.ciphertext; flipped[flipped.count - 1] ^= 1
        #expect(code(flipped, e.keyID, e.annotations) == .invalidArgument)
        #expect(code(Array(e.ciphertext.prefix(10)), e.keyID, e.annotations) == .invalidArgument)
        #expect(code(e.ciphertext, e.keyID + "x", e.annotations) == .invalidArgument)
        #expect(code(e.ciphertext, e.keyID, [:]) == .invalidArgument)
        #expect(code(e.ciphertext, e.keyID, e.annotations.merging(["extra.kekd.io": [1]]) { $1 }) == .invalidArgument)
        #expect(code(e.ciphertext, e.keyID, [VaultKeyring.localKEKAnnotation: Array("not-vault".utf8)]) == .invalidArgument)
        #expect(try vault.stats().requests == 0)
    }
}

@Suite struct KeyFollowingTests {
    private func info(latest: Int, _ created: [Int: Int64]) -> TransitKeyInfo {
        TransitKeyInfo(latestVersion: latest, versionCreated: created, minDecryptionVersion: 1, minEncryptionVersion: 0,
                       supportsEncryption: true, type: "aes256-gcm96")
    }

    @Test func keyIDMovesForwardOnlyAndFollowsARecreatedKey() throws {
        let config = try VaultConfiguration(address: "https://v:8200", keyName: "k", auth: .tokenFile(path: "/t"))
        let active = ActiveKEK(key: try SymmetricKey.random(), wrapped: "vault:v2:QUJD", keyID: "id2", vaultVersion: 2,
                               vaultCreated: 200, createdAt: 0)
        func reason(_ i: TransitKeyInfo) -> String? { VaultKeyring.needsNewKEK(active: active, info: i, config: config, now: 1) }
        #expect(reason(info(latest: 2, [1: 100, 2: 200])) == nil)
        #expect(reason(info(latest: 3, [1: 100, 2: 200, 3: 300])) != nil, "rotation")
        #expect(reason(info(latest: 1, [1: 100])) == nil, "a lagging replica must not move the key_id back")
        #expect(VaultKeyring.isStale(info(latest: 1, [1: 100]), active: active))
        #expect(reason(info(latest: 1, [1: 500])) != nil, "deleted and recreated: version 1 is newer than our version 2")
        #expect(reason(info(latest: 2, [1: 400, 2: 500])) != nil, "recreated and rotated to the same version number")
        #expect(VaultKeyring.needsNewKEK(active: nil, info: info(latest: 1, [1: 1]), config: config, now: 1) != nil)
    }
}
