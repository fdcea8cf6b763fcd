import Foundation
import Synchronization
import Testing
@testable import KMS

/// A backend of a given kind that answers with its own name, so a test sees which backend served a call.
private final class NamedBackend: KeyBackend {
    let name: String
    let blocks: Bool
    /// The deadline of the last call's context: what reached this backend.
    let lastDeadline = Atomic<UInt64>(0)
    let encrypts = Atomic<Int>(0)
    let decrypts = Atomic<Int>(0)
    let reloads = Atomic<Int>(0)
    init(_ name: String, blocks: Bool = false) { self.name = name; self.blocks = blocks }
    func status() -> BackendStatus { BackendStatus(healthy: true, keyID: "\(name)-key", detail: "") }
    func wouldBlock(_ call: BackendCall) -> Bool { blocks }
    func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        lastDeadline.store(context.deadline ?? 0, ordering: .relaxed)
        encrypts.add(1, ordering: .relaxed)
        return EncryptResult(ciphertext: Array(name.utf8), keyID: "\(name)-key", annotations: [:])
    }
    func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                 context: CallContext) throws(KMSError) -> [UInt8] {
        lastDeadline.store(context.deadline ?? 0, ordering: .relaxed)
        decrypts.add(1, ordering: .relaxed)
        return Array(name.utf8)
    }
    func reload() { reloads.add(1, ordering: .relaxed) }
    func close() {}
}

private let fileKeyID = "kekd-v3-0123456789abcdef01234567"
private let vaultKeyID = "kekd-vault-0123456789abcdef0123456789abcdef-v2"
private let pkcs11KeyID = "kekd-pkcs11-0123456789abcdef-v1"

private func decrypt(_ set: BackendSet, _ keyID: String) throws(KMSError) -> String {
    String(decoding: try set.decrypt(ciphertext: [1, 2, 3], keyID: keyID, annotations: [:], uid: "u"), as: UTF8.self)
}

@Test func keyIDKindsComeFromPrefixesThatNeverCollide() {
    #expect(KeyIDKind.of(fileKeyID) == "file")
    #expect(KeyIDKind.of("kekd-v12-abc") == "file")
    #expect(KeyIDKind.of(vaultKeyID) == "vault")
    #expect(KeyIDKind.of(pkcs11KeyID) == "pkcs11")
    // `kekd-v` alone, or followed by anything but a digit, is not the file backend's.
    for foreign in ["kekd-v", "kekd-vx-1", "kekd-va", "", "k1", "KEKD-V1-ab", "vault:v1:abc", "kekd-pkcs1-x"] {
        #expect(KeyIDKind.of(foreign) == nil, "\(foreign)")
    }
}

@Test func encryptAndStatusUseTheEncryptingBackendDecryptRoutesByKeyID() throws {
    let vault = NamedBackend("vault", blocks: true), file = NamedBackend("file")
    let set = try BackendSet(encrypting: vault, decryptOnly: [file])
    #expect(set.name == "vault")
    #expect(set.status().keyID == "vault-key")
    #expect(try set.encrypt(plaintext: [9], uid: "u").keyID == "vault-key")
    #expect(file.encrypts.load(ordering: .relaxed) == 0)
    #expect(try decrypt(set, fileKeyID) == "file")
    #expect(try decrypt(set, vaultKeyID) == "vault")
    #expect(file.decrypts.load(ordering: .relaxed) == 1 && vault.decrypts.load(ordering: .relaxed) == 1)
    #expect(set.servingBackendName(decryptKeyID: fileKeyID) == "file")
    #expect(set.servingBackendName(decryptKeyID: "garbage") == "vault")
    // The caller's context reaches the backend the call is routed to.
    _ = try set.decrypt(ciphertext: [1], keyID: fileKeyID, annotations: [:], uid: "u", context: CallContext(deadline: 42))
    #expect(file.lastDeadline.load(ordering: .relaxed) == 42 && vault.lastDeadline.load(ordering: .relaxed) == 0)
    _ = try set.encrypt(plaintext: [1], uid: "u", context: CallContext(deadline: 7))
    #expect(vault.lastDeadline.load(ordering: .relaxed) == 7)
    set.reload()
    #expect(file.reloads.load(ordering: .relaxed) == 1 && vault.reloads.load(ordering: .relaxed) == 1)
    #expect(set.members.map(\.role) == [.encrypt, .decryptOnly])
}

@Test func aKeyIDOfAnUnconfiguredKindIsFailedPreconditionNamingIt() throws {
    let file = NamedBackend("file")
    let set = try BackendSet(encrypting: file)
    #expect(!set.wouldBlock(.encrypt))
    for (keyID, kind) in [(vaultKeyID, "vault"), (pkcs11KeyID, "pkcs11")] {
        #expect(throws: KMSError.self) { try decrypt(set, keyID) }
        do { _ = try decrypt(set, keyID) } catch {
            #expect(error.code == .failedPrecondition)
            #expect(error.message.contains("belongs to the \(kind) backend, which this kekd does not have"))
        }
    }
    #expect(file.decrypts.load(ordering: .relaxed) == 0)
}

@Test func anUnknownKeyIDFormatIsInvalidArgumentAndReachesNoBackend() throws {
    let file = NamedBackend("file"), vault = NamedBackend("vault")
    let set = try BackendSet(encrypting: file, decryptOnly: [vault])
    do { _ = try decrypt(set, "some-other-plugin-key"); Issue.record("decrypted") } catch {
        #expect(error.code == .invalidArgument)
    }
    #expect(file.decrypts.load(ordering: .relaxed) == 0 && vault.decrypts.load(ordering: .relaxed) == 0)
}

@Test func twoBackendsOfOneKindAreRefused() {
    #expect(throws: KMSError.self) { try BackendSet(encrypting: NamedBackend("file"), decryptOnly: [NamedBackend("file")]) }
}

@Test func kmsServiceNamesTheBackendThatServesADecrypt() throws {
    let service = KMSService(backend: try BackendSet(encrypting: NamedBackend("vault"), decryptOnly: [NamedBackend("file")]))
    #expect(service.decryptBackendName(keyID: fileKeyID) == "file")
    #expect(service.decryptBackendName(keyID: vaultKeyID) == "vault")
    #expect(KMSService(backend: NamedBackend("file")).decryptBackendName(keyID: vaultKeyID) == "file")
}

@Test func wouldBlockAsksTheBackendTheCallGoesTo() throws {
    let vault = NamedBackend("vault", blocks: true), file = NamedBackend("file")
    let set = try BackendSet(encrypting: vault, decryptOnly: [file])
    #expect(set.wouldBlock(.encrypt))
    #expect(set.wouldBlock(.decrypt(keyID: vaultKeyID, annotations: [:])))
    #expect(!set.wouldBlock(.decrypt(keyID: fileKeyID, annotations: [:])))
    // Refused at once (unknown prefix, or a kind this kekd does not have): nothing to wait for.
    #expect(!set.wouldBlock(.decrypt(keyID: "garbage", annotations: [:])))
    #expect(!set.wouldBlock(.decrypt(keyID: pkcs11KeyID, annotations: [:])))
    let fileOnly = try BackendSet(encrypting: file)
    #expect(!fileOnly.wouldBlock(.encrypt))
}
