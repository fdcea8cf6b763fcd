import Crypto
import Foundation
import Testing
@testable import KMS
import Logging

private func makeBackend(_ folder: TempFolder, poll: Double? = 0.05, log: Logger = Logger { _ in }) throws -> (FileKeyBackend, String) {
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    return (try FileKeyBackend(keyFilePath: path, pollInterval: poll, log: log), path)
}

private func rotate(_ path: String) throws {
    try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in _ = try file.rotate() }
}

private func decrypt(_ backend: FileKeyBackend, _ r: EncryptResult) throws(KMSError) -> [UInt8] {
    try backend.decrypt(ciphertext: r.ciphertext, keyID: r.keyID, annotations: r.annotations, uid: "u")
}

@Test func encryptOutputForA32ByteDEKIsWithinTheApiserverLimits() throws {
    let folder = TempFolder()
    let (backend, _) = try makeBackend(folder, poll: nil)
    defer { backend.close() }
    let dek = try SecureRandom.bytes(32)
    let result = try backend.encrypt(plaintext: dek, uid: "u")
    #expect(result.ciphertext.count == 32 + Envelope.overhead)
    #expect(result.ciphertext.count <= KMSLimits.maxDEKCiphertextBytes)
    #expect(try validateKeyID(result.keyID) == ())
    #expect(try validateAnnotations(result.annotations) == ())
    #expect(result.annotations.keys.allSatisfy { $0.hasSuffix(".kekd.io") })
    #expect(result.keyID == backend.status().keyID)
    #expect(try decrypt(backend, result) == dek)
    let big = try SecureRandom.bytes(1 << 20)
    #expect(try decrypt(backend, backend.encrypt(plaintext: big, uid: "u")) == big)
}

@Test func decryptErrorsDistinguishForeignFromRetiredAndPruned() throws {
    let folder = TempFolder()
    let (backend, path) = try makeBackend(folder, poll: nil)
    defer { backend.close() }
    let v1 = try backend.encrypt(plaintext: [1], uid: "u")
    try rotate(path)
    backend.reload()
    let v2 = try backend.encrypt(plaintext: [2], uid: "u")
    #expect(v2.keyID != v1.keyID)
    #expect(try decrypt(backend, v1) == [1])

    // Wrong key_id (another valid one from this file, or garbage): INVALID_ARGUMENT.
    for keyID in [v2.keyID, "garbage"] {
        do { _ = try backend.decrypt(ciphertext: v1.ciphertext, keyID: keyID, annotations: v1.annotations, uid: "u"); Issue.record("opened") }
        catch { #expect(error.code == .invalidArgument) }
    }
    // A ciphertext from another key file: INVALID_ARGUMENT.
    let otherFolder = TempFolder()
    let (other, _) = try makeBackend(otherFolder, poll: nil)
    let foreign = try other.encrypt(plaintext: [3], uid: "u")
    other.close()
    do { _ = try decrypt(backend, foreign); Issue.record("opened foreign") } catch { #expect(error.code == .invalidArgument) }
    // Edited annotations: INVALID_ARGUMENT.
    do {
        _ = try backend.decrypt(ciphertext: v1.ciphertext, keyID: v1.keyID, annotations: ["local-kek.kekd.io": Array("x".utf8)], uid: "u")
        Issue.record("opened with edited annotations")
    } catch { #expect(error.code == .invalidArgument) }

    // Retired: FAILED_PRECONDITION naming the version; the primary still works.
    try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in _ = try file.retire(version: 1) }
    backend.reload()
    do { _ = try decrypt(backend, v1); Issue.record("retired version decrypted") } catch {
        #expect(error.code == .failedPrecondition)
        #expect(error.message.contains("key version 1") && error.message.contains("retired"))
    }
    #expect(try decrypt(backend, v2) == [2])
    // Pruned (unknown to the file): FAILED_PRECONDITION naming the version.
    try KeyFileStore.update(path: path) { (file: inout KeyFile) in _ = file.prune() }
    backend.reload()
    do { _ = try decrypt(backend, v1); Issue.record("pruned version decrypted") } catch {
        #expect(error.code == .failedPrecondition)
        #expect(error.message.contains("key version 1"))
    }
    #expect(backend.status().healthy)
}

@Test func aVersionFromALaterCopyOfTheFileIsNamedAsSuch() throws {
    // HA: node A rotated and encrypted; node B still has the older copy of the same file.
    let folder = TempFolder()
    let (lagging, path) = try makeBackend(folder, poll: nil)
    defer { lagging.close() }
    try rotate(path)
    let ahead = try FileKeyBackend(keyFilePath: path, pollInterval: nil, log: Logger { _ in })
    defer { ahead.close() }
    let sealed = try ahead.encrypt(plaintext: [1], uid: "u")
    do { _ = try decrypt(lagging, sealed); Issue.record("decrypted") } catch {
        #expect(error.code == .failedPrecondition)
        #expect(error.message.contains("key version 2") && error.message.contains("newer than this key file"))
    }
    lagging.reload()
    #expect(try decrypt(lagging, sealed) == [1])
}

@Test func aStagedVersionDecryptsButDoesNotEncrypt() throws {
    // The two-step rotation: node B has v2 staged while node A already encrypts with it.
    let folderA = TempFolder()
    let (nodeA, pathA) = try makeBackend(folderA, poll: nil)
    defer { nodeA.close() }
    try KeyFileStore.update(path: pathA) { (file: inout KeyFile) throws(KMSError) in _ = try file.stage() }
    let staged = try KeyFileStore.load(path: pathA).file
    let folderB = TempFolder()
    let pathB = folderB.file("kek.json")
    try writeFile(pathB, staged.serialized())
    let nodeB = try FileKeyBackend(keyFilePath: pathB, pollInterval: nil, log: Logger { _ in })
    defer { nodeB.close() }
    nodeA.reload()
    #expect(nodeA.status().keyID == staged.keyID(forVersion: 1))   // staging changes nothing for Encrypt
    try KeyFileStore.update(path: pathA) { (file: inout KeyFile) throws(KMSError) in _ = try file.promote(version: 2) }
    nodeA.reload()
    let sealed = try nodeA.encrypt(plaintext: [4], uid: "u")
    #expect(sealed.keyID == staged.keyID(forVersion: 2))
    #expect(nodeB.status().keyID == staged.keyID(forVersion: 1))
    #expect(try decrypt(nodeB, sealed) == [4])
}

@Test func rotationIsPickedUpLiveAndOldCiphertextsStillDecrypt() throws {
    let folder = TempFolder()
    let logs = LogCollector()
    let (backend, path) = try makeBackend(folder, log: logs.sink)
    defer { backend.close() }
    let before = backend.status().keyID
    let old = try backend.encrypt(plaintext: [7, 7], uid: "u")
    try rotate(path)
    #expect(eventually { backend.status().keyID != before })
    let after = backend.status()
    #expect(after.healthy && after.keyID.hasPrefix("kekd-v2-"))
    let new = try backend.encrypt(plaintext: [8], uid: "u")
    #expect(new.keyID == after.keyID)
    #expect(try decrypt(backend, old) == [7, 7])
    #expect(try decrypt(backend, new) == [8])
    #expect(logs.all.contains { $0.contains("\"key file reloaded\"") && $0.contains(after.keyID) })
}

@Test func aBrokenFileNeverTakesEffectAndIsLoggedOnce() throws {
    let folder = TempFolder()
    let logs = LogCollector()
    let (backend, path) = try makeBackend(folder, log: logs.sink)
    defer { backend.close() }
    let keyID = backend.status().keyID
    let sealed = try backend.encrypt(plaintext: [5], uid: "u")
    // Cut to half in place (one truncate, so every poll sees the same broken file): the old keys stay.
    let good = try readFile(path)
    #expect(truncate(path, off_t(good.count / 2)) == 0)
    #expect(eventually { logs.all.contains { $0.contains("\"level\":\"warn\"") } })
    usleep(300_000)   // several more polls of the same broken file
    let warnings = logs.all.filter { $0.contains("\"level\":\"warn\"") }
    #expect(warnings.count == 1)
    #expect(warnings.first?.contains("keeping the current keys") == true)
    let status = backend.status()
    #expect(status.healthy && status.keyID == keyID && status.detail.contains("rejected"))
    #expect(try decrypt(backend, sealed) == [5])
    #expect(try backend.encrypt(plaintext: [1], uid: "u").keyID == keyID)
    // SIGHUP on the same broken file logs again.
    backend.reload()
    #expect(logs.all.filter { $0.contains("\"level\":\"warn\"") }.count == 2)

    // Garbage, then a world-readable file: still the old keys.
    try writeFile(path, Array("garbage".utf8))
    #expect(eventually { logs.all.filter { $0.contains("\"level\":\"warn\"") }.count >= 3 })
    try writeFile(path, good, mode: 0o644)
    #expect(eventually { logs.all.contains { $0.contains("chmod 600") } })
    #expect(backend.status().keyID == keyID)

    // The good file back: rejection cleared.
    try writeFile(path, good)
    #expect(eventually { !backend.status().detail.contains("rejected") })
    #expect(try decrypt(backend, sealed) == [5])
}

@Test func aReplacementThatWouldReuseOrLoseKeysIsRefused() throws {
    let folder = TempFolder()
    let logs = LogCollector()
    let (backend, path) = try makeBackend(folder, poll: nil, log: logs.sink)
    defer { backend.close() }
    let original = try readFile(path)
    let keyID = backend.status().keyID
    // A freshly initialised file (another file id) in its place.
    try FileManager.default.removeItem(atPath: path)
    try FileKeyBackend.initializeKeyFile(path: path)
    backend.reload()
    #expect(backend.status().keyID == keyID)
    #expect(logs.all.last?.contains("different file id") == true)
    // Rolling the same file back to an older primary.
    try writeFile(path, original)
    try rotate(path)
    backend.reload()
    let rotated = backend.status().keyID
    #expect(rotated != keyID)
    try writeFile(path, original)
    backend.reload()
    #expect(backend.status().keyID == rotated)
    #expect(logs.all.last?.contains("move back") == true)
}

@Test func statusAndEncryptAgreeDuringRotation() throws {
    let folder = TempFolder()
    let (backend, path) = try makeBackend(folder, poll: 0.01)
    defer { backend.close() }
    let stop = Atomic<Bool>(false)
    let rotator = Thread {
        for _ in 0..<10 { try? rotate(path); usleep(20_000) }
        stop.store(true, ordering: .releasing)
    }
    rotator.start()
    var keyIDs = Set<String>()
    while !stop.load(ordering: .acquiring) {
        let result = try backend.encrypt(plaintext: [1], uid: "u")
        keyIDs.insert(result.keyID)
        // Every key_id Encrypt returns decrypts, and is a version of this file.
        #expect(try decrypt(backend, result) == [1])
    }
    #expect(eventually { backend.status().keyID.hasPrefix("kekd-v11-") })
    #expect(keyIDs.count >= 2)
}

@Test func auditKeyIsStableAcrossRotationAndPruning() throws {
    let folder = TempFolder()
    let (backend, path) = try makeBackend(folder, poll: nil)
    defer { backend.close() }
    let key = backend.auditHMACKey()
    #expect(key.count == 32)
    let file = try KeyFileStore.load(path: path).file
    #expect(key == (try HKDFSHA256.derive(inputKey: file.auditSecret, salt: file.fileID, info: Array("kekd audit-chain hmac key v1".utf8), length: 32)))
    #expect(!file.versions.contains { $0.key == key })
    try rotate(path)
    try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in _ = try file.retire(version: 1); _ = file.prune() }
    #expect(try FileKeyBackend.auditHMACKey(keyFilePath: path) == key)
    let otherFolder = TempFolder()
    let (other, otherPath) = try makeBackend(otherFolder, poll: nil)
    other.close()
    #expect(try FileKeyBackend.auditHMACKey(keyFilePath: otherPath) != key)
}

@Test func backendStartFailsClearly() throws {
    let folder = TempFolder()
    do { _ = try FileKeyBackend(keyFilePath: folder.file("missing"), pollInterval: nil, log: Logger { _ in }); Issue.record("started") } catch {
        #expect(error.message.contains("does not exist"))
    }
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
    do { _ = try FileKeyBackend(keyFilePath: path, pollInterval: nil, log: Logger { _ in }); Issue.record("started") } catch {
        #expect(error.message.contains("chmod 600"))
    }
}

@Test func closeStopsThePoller() throws {
    let folder = TempFolder()
    let logs = LogCollector()
    let (backend, path) = try makeBackend(folder, poll: 0.02, log: logs.sink)
    backend.close()
    usleep(100_000)
    try rotate(path)
    usleep(200_000)
    #expect(!logs.all.contains { $0.contains("reloaded") })
}

import Synchronization

@Test func everyTamperedByteThroughTheBackendIsInvalidArgument() throws {
    // Including the key version bytes: an edited version never passes as "unknown key version".
    let folder = TempFolder()
    let (backend, path) = try makeBackend(folder, poll: nil)
    defer { backend.close() }
    try rotate(path)
    backend.reload()
    let sealed = try backend.encrypt(plaintext: Array(repeating: 0x11, count: 32), uid: "u")
    for index in sealed.ciphertext.indices {
        for flip: UInt8 in [0x01, 0x02, 0x80] {
            var tampered = sealed.ciphertext
            tampered[index] ^= flip
            do {
                _ = try backend.decrypt(ciphertext: tampered, keyID: sealed.keyID, annotations: sealed.annotations, uid: "u")
                Issue.record("byte \(index) ^ \(flip) decrypted")
            } catch { #expect(error.code == .invalidArgument, "byte \(index): \(error.message)") }
        }
    }
}

@Test func aKeyFileBehindASwappedSymlinkIsFollowed() throws {
    // How a mounted Kubernetes Secret changes: kek.json -> ..data/kek.json, and ..data is re-pointed atomically.
    let folder = TempFolder()
    let first = folder.file("v1/kek.json"), second = folder.file("v2/kek.json")
    try FileKeyBackend.initializeKeyFile(path: first)
    var file = try KeyFileStore.load(path: first).file
    try file.rotate()
    try FileManager.default.createDirectory(atPath: folder.file("v2"), withIntermediateDirectories: true)
    try writeFile(second, file.serialized())
    try FileManager.default.createSymbolicLink(atPath: folder.file("..data"), withDestinationPath: "v1")
    try FileManager.default.createSymbolicLink(atPath: folder.file("kek.json"), withDestinationPath: "..data/kek.json")
    let backend = try FileKeyBackend(keyFilePath: folder.file("kek.json"), pollInterval: 0.05, log: Logger { _ in })
    defer { backend.close() }
    #expect(backend.status().keyID == file.keyID(forVersion: 1))
    try FileManager.default.createSymbolicLink(atPath: folder.file("..data_tmp"), withDestinationPath: "v2")
    #expect(rename(folder.file("..data_tmp"), folder.file("..data")) == 0)
    #expect(eventually { backend.status().keyID == file.keyID(forVersion: 2) })
}

@Test func statusFollowsRotationAndRejectedReloadsAndServiceReusesTheEncodedAnswer() throws {
    let folder = TempFolder()
    let (backend, path) = try makeBackend(folder, poll: nil)
    defer { backend.close() }
    let service = KMSService(backend: backend)
    let first = service.statusAnswer()
    #expect(first.response.healthz == "ok" && first.bytes == first.response.serializedBytes())
    // Unchanged state: the same answer.
    #expect(service.statusAnswer().bytes == first.bytes)
    #expect(backend.status().detail.contains("primary version 1") && !backend.status().detail.contains("rejected"))
    try rotate(path)
    backend.reload()
    let rotated = service.statusAnswer()
    #expect(rotated.response.keyID == backend.status().keyID && rotated.response.keyID != first.response.keyID)
    #expect(rotated.bytes == rotated.response.serializedBytes())
    #expect(backend.status().detail.contains("primary version 2"))
    // A broken file is rejected: the detail says so (the keys and key_id stay).
    try writeFile(path, Array("{not json".utf8))
    backend.reload()
    #expect(backend.status().detail.contains("last change rejected") && backend.status().keyID == rotated.response.keyID)
}

/// Each key version's AAD built at load is the one `Envelope.additionalData` builds per call: a ciphertext Encrypt
/// made opens through the general path, and `isOwn` takes only Encrypt's own key_id and annotation.
@Test func ownAADIsTheGeneralAAD() throws {
    let folder = TempFolder()
    let (backend, path) = try makeBackend(folder, poll: nil)
    defer { backend.close() }
    let snapshot = try KeySnapshot(KeyFileStore.load(path: path).file)
    let entry = snapshot.primary
    #expect(entry.ownAAD == (try Envelope.additionalData(keyVersion: entry.version, keyID: entry.keyID,
                                                          annotations: FileKeyBackend.annotations)))
    let sealed = try backend.encrypt(plaintext: [1, 2, 3], uid: "u")
    #expect(try Envelope.open(ciphertext: sealed.ciphertext, key: entry.key, keyID: sealed.keyID,
                              annotations: sealed.annotations) == [1, 2, 3])
    #expect(entry.isOwn(keyID: sealed.keyID, annotations: sealed.annotations))
    #expect(!entry.isOwn(keyID: sealed.keyID + "x", annotations: sealed.annotations))
    #expect(!entry.isOwn(keyID: sealed.keyID, annotations: [FileKeyBackend.annotationKey: Array("x".utf8)]))
    #expect(!entry.isOwn(keyID: sealed.keyID, annotations: ["other.kekd.io": FileKeyBackend.annotationValue]))
    #expect(!entry.isOwn(keyID: sealed.keyID, annotations: sealed.annotations.merging(["b.example.com": []]) { a, _ in a }))
}
