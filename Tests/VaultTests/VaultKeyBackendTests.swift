import Foundation
import GRPCCodes
import KMS
import Logging
import Synchronization
import Testing
@testable import Vault

@Suite(.serialized, .enabled(if: FakeVault.available, "needs KEKD_PYTHON for fake_vault.py"))
struct VaultKeyBackendTests {
    private func backend(_ vault: FakeVault, _ extra: [String: String] = [:], auth: String = "token",
                         calls: Counter? = nil) throws -> VaultKeyBackend {
        let config = try VaultConfiguration.parse(vault.flags(extra, auth: auth))
        let b = try VaultKeyBackend(configuration: config, onBackendCall: { _, _, _ in calls?.add() }, log: Logger { _ in })
        #expect(b.waitUntilReady(timeout: 10), "\(b.status().detail)")
        return b
    }

    @Test func statusEncryptDecryptThroughTheKeyBackendProtocol() throws {
        let vault = try FakeVault()
        let calls = Counter()
        let b: any KeyBackend = try backend(vault, calls: calls)
        defer { b.close() }
        #expect(b.name == "vault")
        let status = b.status()
        #expect(status.healthy && status.detail == "ok" && !status.keyID.isEmpty)
        let seed = (0..<32).map { UInt8($0) }
        let before = calls.value
        let result = try b.encrypt(plaintext: seed, uid: "u1")
        #expect(calls.value == before, "Encrypt never calls Vault")
        #expect(result.keyID == status.keyID)
        #expect(try b.decrypt(ciphertext: result.ciphertext, keyID: result.keyID, annotations: result.annotations, uid: "u2") == seed)
        #expect(throws: KMSError(.invalidArgument, "key_id was not issued by kekd's Vault backend for this key version")) {
            try b.decrypt(ciphertext: result.ciphertext, keyID: "other", annotations: result.annotations, uid: "u3")
        }
    }

    @Test func vaultDenialAfterReloginIsPermissionDenied() throws {
        let vault = try FakeVault()
        let writer = try backend(vault)
        defer { writer.close() }
        let e = try writer.encrypt(plaintext: [1, 2, 3], uid: "u")
        let reader = try backend(vault, auth: "approle")
        defer { reader.close() }
        try vault.call("config", ["rules": [["path": "transit/decrypt", "status": 403, "count": 2]]])
        do {
            _ = try reader.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations, uid: "u")
            Issue.record("decrypt succeeded")
        } catch {
            #expect(error.code == .permissionDenied)
        }
        #expect(try vault.stats().byOp["login"] == 2, "exactly one re-login before giving up")
        // The next attempt works again.
        #expect(try reader.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations, uid: "u") == [1, 2, 3])
    }

    @Test func anUncachedDecryptEndsAtTheCallersDeadlineOrCancellation() throws {
        let vault = try FakeVault()
        let writer = try backend(vault)
        defer { writer.close() }
        let e = try writer.encrypt(plaintext: [1, 2, 3], uid: "u")
        // Vault stalls every unwrap for 3 s; the reader has not cached the local KEK.
        try vault.call("config", ["rules": [["path": "transit/decrypt", "delay_ms": 3000, "count": -1]]])
        let reader = try backend(vault)
        defer { reader.close() }
        let t0 = Date()
        let deadline = CallContext.monotonicNanos() + 300_000_000
        #expect(throws: KMSError.self) {
            try reader.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations, uid: "u",
                               context: CallContext(deadline: deadline))
        }
        let waited = Date().timeIntervalSince(t0)
        #expect(waited >= 0.25 && waited < 1.5, "waited \(waited) s for a 0.3 s deadline")
        // A cancelled caller stops waiting although its deadline is far (once the first unwrap, cut at 0.3 s, is over).
        Thread.sleep(forTimeInterval: 0.5)
        let cancellation = CallCancellation()
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { cancellation.cancel() }
        let t1 = Date()
        do {
            _ = try reader.decrypt(ciphertext: e.ciphertext, keyID: e.keyID, annotations: e.annotations, uid: "u",
                                   context: CallContext(deadline: CallContext.monotonicNanos() + 20_000_000_000, cancellation: cancellation))
            Issue.record("decrypt succeeded")
        } catch {
            let cancelledAfter = Date().timeIntervalSince(t1)
            #expect(cancelledAfter >= 0.15 && cancelledAfter < 1.5, "cancelled call returned after \(cancelledAfter) s: \(error)")
            #expect(error.code == .cancelled, "\(error)")
        }
    }
}

@Suite struct VaultKeyBackendOfflineTests {
    @Test func unreachableVaultAtStartReportsUnhealthyWithoutKeyID() throws {
        let files = TempFiles()
        let config = try VaultConfiguration.parse(["vault-addr": "https://127.0.0.1:1", "vault-key": "k",
                                                   "vault-token-file": files.write("t", "x")])
        let b = try VaultKeyBackend(configuration: config, log: Logger { _ in })
        defer { b.close() }
        #expect(!b.waitUntilReady(timeout: 0.5))
        #expect(!b.status().healthy && b.status().keyID.isEmpty)
        func code(_ body: () throws -> Void) -> GRPCStatusCode? {
            do { try body(); return nil } catch { return (error as? KMSError)?.code }
        }
        // The codes README documents, straight from the keyring's own errors: an unreachable Vault is UNAVAILABLE, a
        // tampered or foreign envelope INVALID_ARGUMENT whatever Vault's state.
        #expect(code { _ = try b.encrypt(plaintext: [1], uid: "u") } == .unavailable)
        let keyID = "kekd-vault-" + String(repeating: "0", count: 32) + "-v1"
        let annotations = [VaultKeyring.localKEKAnnotation: Array("vault:v1:AAAA".utf8)]
        let envelope = [VaultKeyring.formatVersion] + [UInt8](repeating: 7, count: 40)
        #expect(code { _ = try b.decrypt(ciphertext: envelope, keyID: keyID, annotations: annotations, uid: "u") } == .unavailable)
        #expect(code { _ = try b.decrypt(ciphertext: [9] + envelope.dropFirst(), keyID: keyID, annotations: annotations, uid: "u") } == .invalidArgument)
        #expect(code { _ = try b.decrypt(ciphertext: envelope, keyID: "kekd-v1-000000000000000000000000", annotations: annotations, uid: "u") } == .invalidArgument)
    }
}
