// Issue 15 item 3: revoking kekd in Vault stops it. A 403/404 for the key drops every cached local KEK and fails
// Status and Encrypt; cached local KEKs expire after --vault-cache-ttl even when Vault says nothing;
// min_decryption_version is enforced on Decrypt, cached local KEKs included; an exhausted local KEK that Vault
// cannot replace fails Encrypt (UNAVAILABLE) and Status.
import Crypto
import Foundation
import KMS
import GRPCCodes
import Locking
import Testing
@testable import Vault

@Suite struct LocalKEKCacheTests {
    final class Clock: Sendable {
        private let value = LockedValue<Double>(1000)
        var now: @Sendable () -> Double { { self.value.withLock { $0 } } }
        func advance(_ seconds: Double) { value.withLock { $0 += seconds } }
    }

    @Test func entriesExpireAfterTheTTLEvenWhenUsed() throws {
        let clock = Clock()
        let cache = LocalKEKCache(capacity: 10, ttl: 60, now: clock.now)
        let key = try SymmetricKey.random()
        cache.put("vault:v1:QUJD", key)
        for _ in 0..<5 {
            clock.advance(11)
            #expect(cache.get("vault:v1:QUJD") != nil, "use does not extend the entry")
        }
        clock.advance(5)
        #expect(cache.get("vault:v1:QUJD") == nil)
        #expect(cache.count == 0)
    }

    @Test func clearDropsEverythingAndRefusesUnwrapsThatWereInFlight() throws {
        let cache = LocalKEKCache(capacity: 10, ttl: 60)
        cache.put("vault:v1:QUJD", try SymmetricKey.random())
        let before = cache.generation
        cache.clear()
        #expect(cache.get("vault:v1:QUJD") == nil)
        cache.put("vault:v1:RUZH", try SymmetricKey.random(), ifGeneration: before)
        #expect(cache.count == 0, "an unwrap that started before the revocation is not cached")
        cache.put("vault:v1:RUZH", try SymmetricKey.random(), ifGeneration: cache.generation)
        #expect(cache.count == 1)
    }

    @Test func raisingMinDecryptionVersionDropsOlderVersions() throws {
        let cache = LocalKEKCache(capacity: 10, ttl: 60)
        for version in 1...3 { cache.put("vault:v\(version):QUJD", try SymmetricKey.random()) }
        cache.removeVersions(below: 3)
        #expect(cache.get("vault:v3:QUJD") != nil && cache.get("vault:v2:QUJD") == nil && cache.get("vault:v1:QUJD") == nil)
    }

    @Test func cacheTTLFlag() throws {
        let files = TempFiles()
        let base = ["vault-addr": "https://v:8200", "vault-key": "k", "vault-token-file": files.write("t", "x")]
        #expect(try VaultConfiguration.parse(base).cacheTTL == 300)
        #expect(try VaultConfiguration.parse(base.merging(["vault-cache-ttl": "90s"]) { $1 }).cacheTTL == 90)
        #expect(throws: KMSError.self) { try VaultConfiguration.parse(base.merging(["vault-cache-ttl": "0"]) { $1 }) }
    }
}

@Suite(.serialized, .enabled(if: FakeVault.available, "needs KEKD_PYTHON for fake_vault.py")) struct RevocationTests {
    private func code(_ ring: VaultKeyring, _ e: VaultEnvelope) -> GRPCStatusCode? {
        do { _ = try ring.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations); return nil } catch { return error.code }
    }

    private func waitFor(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while !condition() {
            if Date() > deadline { return false }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return true
    }

    @Test func deletedKeyAndRevokedTokensStopStatusEncryptAndDecrypt() throws {
        let vault = try FakeVault()
        let other = try vault.keyring()
        let uncached = try other.encrypt(Array(repeating: 1, count: 32))
        other.close()
        let ring = try vault.keyring(["vault-key-poll-interval": "100ms", "vault-cache-ttl": "1h"])
        defer { ring.close() }
        let cached = try ring.encrypt(Array(repeating: 2, count: 32))
        #expect(try ring.decrypt(ciphertext: cached.ciphertext, keyID: cached.keyID, annotations: cached.annotations) == Array(repeating: 2, count: 32))
        #expect(try vault.vault("DELETE", "transit/keys/kekd") == 204)
        try vault.call("revoke_all")
        #expect(waitFor { !ring.health().canEncrypt }, "Status must fail once Vault refuses: \(ring.health().detail)")
        #expect(throws: KMSError.self) { try ring.encrypt([1]) }
        #expect(ring.cache.count == 0, "a 403/404 for the key drops every cached local KEK")
        let cachedCode = code(ring, cached), uncachedCode = code(ring, uncached)
        #expect(cachedCode == .permissionDenied || cachedCode == .failedPrecondition, "cached local KEK: \(String(describing: cachedCode))")
        #expect(uncachedCode == .permissionDenied || uncachedCode == .failedPrecondition, "uncached: \(String(describing: uncachedCode))")
        // Still refused a while later: nothing repopulated the cache.
        Thread.sleep(forTimeInterval: 0.3)
        #expect(code(ring, cached) != nil && !ring.health().canEncrypt)
    }

    @Test func cachedLocalKEKExpiresAfterTheTTLWhenVaultSaysNothing() throws {
        let vault = try FakeVault()
        // No key poll during the test: only the TTL can end the cached local KEK's life.
        let ring = try vault.keyring(["vault-key-poll-interval": "1h", "vault-cache-ttl": "700ms"])
        defer { ring.close() }
        let e = try ring.encrypt(Array(repeating: 3, count: 32))
        try vault.call("revoke_all")
        try vault.resetStats()
        #expect(code(ring, e) == nil, "within the TTL the cached local KEK still decrypts, without asking Vault")
        #expect(try vault.stats().requests == 0)
        Thread.sleep(forTimeInterval: 0.8)
        #expect(code(ring, e) == .permissionDenied, "after the TTL Vault is asked, and refuses")
        #expect(!ring.health().canEncrypt, "the 403 from Decrypt fails Status too")
        #expect(throws: KMSError.self) { try ring.encrypt([1]) }
    }

    @Test func minDecryptionVersionIsEnforcedOnCachedAndUncachedLocalKEKs() throws {
        let vault = try FakeVault()
        let stale = try vault.keyring(["vault-key-poll-interval": "1h"])  // never learns the new minimum
        defer { stale.close() }
        let other = try vault.keyring()
        let uncachedV1 = try other.encrypt(Array(repeating: 4, count: 32))
        other.close()
        let ring = try vault.keyring(["vault-key-poll-interval": "100ms"])
        defer { ring.close() }
        let cachedV1 = try ring.encrypt(Array(repeating: 5, count: 32))
        #expect(try vault.vault("POST", "transit/keys/kekd/rotate") == 204)
        #expect(waitFor { ring.health().keyID.hasSuffix("-v2") })
        let v2 = try ring.encrypt(Array(repeating: 6, count: 32))
        #expect(code(ring, cachedV1) == nil)
        #expect(try vault.vault("POST", "transit/keys/kekd/config", ["min_decryption_version": 2]) == 204)
        #expect(waitFor { code(ring, cachedV1) == .failedPrecondition }, "a cached v1 local KEK is refused once the key says 2")
        do {
            _ = try ring.decrypt(ciphertext: cachedV1.ciphertext, keyID: cachedV1.keyID, annotations: cachedV1.annotations)
        } catch {
            #expect(error.message.contains("min_decryption_version 2") && error.message.contains("version 1"), "\(error.message)")
        }
        #expect(code(ring, uncachedV1) == .failedPrecondition)
        #expect(code(ring, v2) == nil)
        #expect(ring.health().canEncrypt)
        // A kekd that has not polled since: Vault itself refuses, and that is FAILED_PRECONDITION too, not a bad input.
        #expect(code(stale, uncachedV1) == .failedPrecondition)
    }

    @Test func localKEKPastItsMaximumAgeFailsEncryptAndStatusWhileVaultCannotWrap() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring(["vault-local-kek-max-age": "1s", "vault-request-timeout": "500ms"])
        defer { ring.close() }
        let first = try ring.encrypt([1])
        try vault.call("config", ["rules": [["path": "transit/encrypt", "status": 503, "count": -1]]])
        Thread.sleep(forTimeInterval: 1.1)
        #expect(!ring.health().canEncrypt, "\(ring.health().detail)")
        #expect(ring.health().detail.contains("max-age"), "\(ring.health().detail)")
        do {
            let e = try ring.encrypt([2])
            Issue.record("encrypted with a local KEK past its maximum age (same KEK: \(e.annotations == first.annotations))")
        } catch {
            #expect(error.code == .unavailable && error.message.contains("cannot wrap a new one"), "\(error.message)")
        }
        try vault.call("config", ["rules": [[String: Any]]()])
        #expect(waitFor { ring.health().canEncrypt }, "\(ring.health().detail)")
        let next = try ring.encrypt([3])
        #expect(next.annotations != first.annotations)
    }

    @Test func encryptionLimitIsEnforcedWhenVaultCannotWrap() throws {
        let vault = try FakeVault()
        let ring = try vault.keyring(["vault-local-kek-max-encryptions": "3", "vault-request-timeout": "500ms"])
        defer { ring.close() }
        try vault.call("config", ["rules": [["path": "transit/encrypt", "status": 503, "count": -1]]])
        for _ in 0..<3 { _ = try ring.encrypt([1]) }
        do {
            _ = try ring.encrypt([1])
            Issue.record("a 4th encryption under a local KEK limited to 3")
        } catch {
            #expect(error.code == .unavailable, "\(error.message)")
        }
        #expect(!ring.health().canEncrypt && ring.health().detail.contains("max-encryptions"), "\(ring.health().detail)")
        try vault.call("config", ["rules": [[String: Any]]()])
        #expect(waitFor { (try? ring.encrypt([1])) != nil })
        #expect(ring.health().canEncrypt)
    }
}
