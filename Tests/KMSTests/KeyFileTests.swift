import Crypto
import Foundation
import Testing
@testable import KMS
import Logging

@Test func keyFileWritesAndLoadsWithMode0600() throws {
    let folder = TempFolder()
    let path = folder.file("sub/dir/kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    #expect(try fileMode(path) == 0o600)
    let loaded = try KeyFileStore.load(path: path).file
    #expect(loaded.versions.count == 1)
    #expect(loaded.primary?.version == 1)
    #expect(loaded.fileID.count == 16)
    let keyID = loaded.keyID(forVersion: 1)
    #expect(keyID.hasPrefix("kekd-v1-") && keyID.utf8.count == 32)
    // The file never holds the key_id's inputs in a way that lets a key_id leak key bytes: it is derived from the id.
    #expect(keyID == KeyFile.keyID(fileID: loaded.fileID, version: 1))
    // Refuses to overwrite.
    do { try FileKeyBackend.initializeKeyFile(path: path); Issue.record("overwrote") } catch {
        #expect(error.message.contains("already exists"))
    }
    #expect(try KeyFileStore.load(path: path).file == loaded)
    // No temp files left behind.
    let names = try FileManager.default.contentsOfDirectory(atPath: folder.file("sub/dir")).sorted()
    #expect(names == ["kek.json", "kek.json.lock"])
}

@Test func serializedFormIsStableAndRoundTrips() throws {
    var file = try KeyFile.generate()
    try file.rotate()
    try file.rotate()
    _ = try file.retire(version: 1)
    let bytes = file.serialized()
    let parsed = try KeyFile.parse(bytes)
    #expect(parsed == file)
    #expect(parsed.serialized() == bytes)
    #expect(parsed.versions.map(\.state) == [.retired, .active, .primary])
    // JSON layout and key order do not matter to the checksum, only values do.
    let json = try JSONSerialization.jsonObject(with: Data(bytes))
    let reordered = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])
    #expect(try KeyFile.parse([UInt8](reordered)) == file)
}

@Test func recreatedFilesNeverShareKeyIDs() throws {
    let a = try KeyFile.generate(), b = try KeyFile.generate()
    #expect(a.keyID(forVersion: 1) != b.keyID(forVersion: 1))
    #expect(a.keyID(forVersion: 1) != a.keyID(forVersion: 2))
}

@Test func everyCorruptionIsDetected() throws {
    var file = try KeyFile.generate()
    try file.rotate()
    let bytes = file.serialized()
    var accepted = 0
    for index in bytes.indices {
        var corrupt = bytes
        corrupt[index] ^= 0x01
        if let parsed = try? KeyFile.parse(corrupt) {
            // Only a flip that JSON ignores (whitespace that stays whitespace) may load, and then it must be equal.
            #expect(parsed == file)
            accepted += 1
        }
    }
    #expect(accepted < bytes.count / 10)
    for length in [0, 1, bytes.count / 2, bytes.count - 3] {
        #expect(throws: KMSError.self) { try KeyFile.parse(Array(bytes.prefix(length))) }
    }
}

@Test func checksumMismatchHasAClearMessage() throws {
    let file = try KeyFile.generate()
    var text = String(decoding: file.serialized(), as: UTF8.self)
    text = text.replacingOccurrences(of: "\"state\": \"primary\"", with: "\"state\": \"active\"")
    do { _ = try KeyFile.parse(Array(text.utf8)); Issue.record("accepted") } catch {
        #expect(error.message.contains("checksum mismatch"))
    }
}

@Test func stateRulesAreEnforced() throws {
    var file = try KeyFile.generate()
    let (old, new) = try file.rotate()
    #expect(old.version == 1 && old.state == .active && new.version == 2 && new.state == .primary)
    #expect(throws: KMSError.self) { try file.retire(version: 2) }   // the primary
    #expect(throws: KMSError.self) { try file.retire(version: 9) }   // unknown
    #expect(try file.retire(version: 1) == true)
    #expect(try file.retire(version: 1) == false)
    #expect(file.prune().map(\.version) == [1])
    #expect(file.versions.map(\.version) == [2])
    try file.rotate()
    #expect(file.primary?.version == 3)

    var twoPrimaries = file
    twoPrimaries.versions[0].state = .primary
    #expect(throws: KMSError.self) { try twoPrimaries.validate() }
    // The checksum of such a file is right, the state rules still reject it.
    do { _ = try KeyFile.parse(twoPrimaries.serialized()); Issue.record("accepted two primaries") } catch {
        #expect(error.message.contains("exactly one primary"))
    }
    var none = file
    none.versions[1].state = .active
    #expect(throws: KMSError.self) { try KeyFile.parse(none.serialized()) }
    var shortKey = file
    shortKey.versions[0].key = Array(repeating: 1, count: 31)
    do { _ = try KeyFile.parse(shortKey.serialized()); Issue.record("accepted a 31-byte key") } catch {
        #expect(error.message.contains("31-byte key"))
    }
}

@Test func stageThenPromoteIsARotationInTwoSteps() throws {
    var file = try KeyFile.generate()
    let staged = try file.stage()
    #expect(staged.version == 2 && staged.state == .active)
    #expect(file.primary?.version == 1)
    try file.validate()
    #expect(throws: KMSError.self) { try file.promote(version: 1) }    // already the primary
    #expect(throws: KMSError.self) { try file.promote(version: 7) }    // unknown
    let (old, new) = try file.promote(version: 2)
    #expect(old.version == 1 && old.state == .active && new.version == 2 && new.state == .primary)
    // Never back to an older version, and never a retired one.
    do { try file.promote(version: 1); Issue.record("promoted an older version") } catch {
        #expect(error.message.contains("older than the primary"))
    }
    try file.stage()
    _ = try file.retire(version: 3)
    do { try file.promote(version: 3); Issue.record("promoted a retired version") } catch {
        #expect(error.message.contains("retired"))
    }
    // A plain rotate after a stage goes past it.
    #expect(try file.rotate().new.version == 4)
}

@Test func groupOrWorldAccessibleFilesAreRejected() throws {
    let folder = TempFolder()
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    for mode in [0o644, 0o640, 0o604, 0o620] {
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        do { _ = try KeyFileStore.load(path: path); Issue.record("accepted mode \(String(mode, radix: 8))") } catch {
            #expect(error.message.contains("chmod 600"))
            #expect(error.message.contains("0" + String(mode, radix: 8)))
        }
    }
    try FileManager.default.setAttributes([.posixPermissions: 0o400], ofItemAtPath: path)
    #expect(throws: Never.self) { try KeyFileStore.load(path: path) }
}

@Test func missingFileAndFoldersAreClear() throws {
    let folder = TempFolder()
    do { _ = try KeyFileStore.load(path: folder.file("nope")); Issue.record("loaded") } catch {
        #expect(error.message.contains("does not exist"))
    }
    do { _ = try KeyFileStore.load(path: folder.path); Issue.record("loaded a folder") } catch {
        #expect(error.code == .failedPrecondition)
    }
    #expect(mkfifo(folder.file("fifo"), 0o600) == 0)
    do { _ = try KeyFileStore.load(path: folder.file("fifo")); Issue.record("loaded a FIFO") } catch {
        #expect(error.message.contains("not a regular file"))
    }
    try writeFile(folder.file("garbage"), Array("hello world, not a key".utf8))
    do { _ = try KeyFileStore.load(path: folder.file("garbage")); Issue.record("loaded garbage") } catch {
        #expect(error.message.contains("not a kekd key file"))
    }
}

@Test func firstFormatKeyFilesLoadAsVersionOne() throws {
    let folder = TempFolder()
    let key = try SecureRandom.bytes(32)
    let raw = folder.file("raw.key"), text = folder.file("b64.key")
    try writeFile(raw, key)
    try writeFile(text, Array((Data(key).base64EncodedString() + "\n").utf8))
    let a = try KeyFileStore.load(path: raw).file
    let b = try KeyFileStore.load(path: text).file
    #expect(a.isLegacyFormat && b.isLegacyFormat)
    #expect(a.versions.count == 1 && a.primary?.version == 1 && a.primary?.key == key)
    // Path-independent: the same key gives the same key_id wherever it lives.
    #expect(a.keyID(forVersion: 1) == b.keyID(forVersion: 1))
    #expect(a.fileID == (try PBKDF2SHA256.derive(password: key, salt: KeyFile.legacyFileIDLabel,
                                                  iterations: KeyFile.legacyFileIDIterations, length: 16)))
    // Not the first release's one-SHA-256 key_id, which was a cheap test of a guessed key.
    #expect(a.keyID(forVersion: 1) != KeyFile.firstReleaseLegacyKeyID(key: key))

    // A backend on the first format encrypts; after `rotate` converts the file, those ciphertexts still decrypt
    // and the audit HMAC key stays the same.
    let backend = try FileKeyBackend(keyFilePath: raw, pollInterval: nil, log: Logger { _ in })
    let sealed = try backend.encrypt(plaintext: [1, 2, 3], uid: "u")
    let auditKey = backend.auditHMACKey()
    try KeyFileStore.update(path: raw) { (file: inout KeyFile) throws(KMSError) in _ = try file.rotate() }
    let converted = try KeyFileStore.load(path: raw).file
    #expect(!converted.isLegacyFormat)
    #expect(converted.keyID(forVersion: 1) == a.keyID(forVersion: 1))
    #expect(try FileKeyBackend.auditHMACKey(keyFilePath: raw) == auditKey)
    backend.reload()
    #expect(backend.status().keyID == converted.keyID(forVersion: 2))
    #expect(try backend.decrypt(ciphertext: sealed.ciphertext, keyID: sealed.keyID, annotations: sealed.annotations, uid: "u") == [1, 2, 3])
    backend.close()

    // Wrong-size first-format files are errors, not keys.
    try writeFile(folder.file("short.key"), Array(repeating: 7, count: 31))
    #expect(throws: KMSError.self) { try KeyFileStore.load(path: folder.file("short.key")) }
}

@Test func firstFormatKeysThatAreTextAreRefused() throws {
    let folder = TempFolder()
    let passphrase = Array("correct horse battery staple!!!\n".utf8)
    #expect(passphrase.count == 32)
    let base64OfText = Array((Data("abcdefghijklmnopqrstuvwxyz012345".utf8).base64EncodedString() + "\n").utf8)
    for (name, bytes) in [("text.key", passphrase), ("b64text.key", base64OfText)] {
        try writeFile(folder.file(name), bytes)
        do {
            _ = try KeyFileStore.load(path: folder.file(name))
            Issue.record("\(name) loaded as a key")
        } catch {
            #expect(error.message.contains("printable text") && !error.message.contains("\n"), "\(error.message)")
        }
    }
}

@Test func ciphertextsUnderTheFirstReleaseLegacyKeyIDStillDecrypt() throws {
    let folder = TempFolder()
    let key = try SecureRandom.bytes(32)
    try writeFile(folder.file("raw.key"), key)
    // What the first release returned for this key file: same envelope, its key_id bound in the AAD.
    let oldKeyID = KeyFile.firstReleaseLegacyKeyID(key: key)
    let annotations = [FileKeyBackend.annotationKey: FileKeyBackend.annotationValue]
    let old = try Envelope.seal(plaintext: [9, 8, 7], key: try SymmetricKey(bytes: key), keyVersion: 1, keyID: oldKeyID,
                                annotations: annotations)
    let backend = try FileKeyBackend(keyFilePath: folder.file("raw.key"), pollInterval: nil, log: Logger { _ in })
    defer { backend.close() }
    #expect(backend.status().keyID != oldKeyID)
    #expect(try backend.decrypt(ciphertext: old, keyID: oldKeyID, annotations: annotations, uid: "u") == [9, 8, 7])
    // The new key_id does not open it (the AAD binds the old one), and neither does the old key_id of another key.
    #expect(throws: KMSError.self) {
        try backend.decrypt(ciphertext: old, keyID: backend.status().keyID, annotations: annotations, uid: "u")
    }
    let foreign = KeyFile.firstReleaseLegacyKeyID(key: try SecureRandom.bytes(32))
    #expect(throws: KMSError.self) { try backend.decrypt(ciphertext: old, keyID: foreign, annotations: annotations, uid: "u") }
    // Still accepted once `rotate` converted the file.
    try KeyFileStore.update(path: folder.file("raw.key")) { (file: inout KeyFile) throws(KMSError) in _ = try file.rotate() }
    backend.reload()
    #expect(try backend.decrypt(ciphertext: old, keyID: oldKeyID, annotations: annotations, uid: "u") == [9, 8, 7])
}

@Test func concurrentWritersAreSerialisedByTheLock() throws {
    let folder = TempFolder()
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    let writers = 6, rotationsEach = 10  // each rotation fsyncs twice: more only slows a loaded machine past the lock timeout
    DispatchQueue.concurrentPerform(iterations: writers) { _ in
        for _ in 0..<rotationsEach {
            do { try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in _ = try file.rotate() } }
            catch { Issue.record("rotate failed: \(error)") }
        }
    }
    let file = try KeyFileStore.load(path: path).file
    // A lost update (two writers reading the same file) would leave fewer versions.
    #expect(file.versions.count == 1 + writers * rotationsEach)
    #expect(file.primary?.version == UInt32(1 + writers * rotationsEach))
}

@Test func aHeldLockMakesWritersWait() throws {
    let folder = TempFolder()
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    let started = Date()
    let released = DispatchSemaphore(value: 0)
    let holder = Thread {
        try? KeyFileStore.withExclusiveLock(path: path) { () throws(KMSError) in
            released.signal()
            usleep(300_000)
        }
    }
    holder.start()
    released.wait()
    try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in _ = try file.rotate() }
    #expect(Date().timeIntervalSince(started) >= 0.25)
}

@Test func atomicReplaceKeepsReadersOnCompleteFiles() throws {
    let folder = TempFolder()
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    let inodeBefore = try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? NSNumber
    // Holding the original open keeps its inode from being reused, and shows whether it was rewritten in place.
    let original = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? original.close() }
    let originalBytes = try readFile(path)
    let done = Atomic<Bool>(false)
    let reader = Thread {
        while !done.load(ordering: .acquiring) {
            do { _ = try KeyFileStore.load(path: path) } catch { Issue.record("reader saw a broken file: \(error)") }
        }
    }
    reader.start()
    for _ in 0..<30 { try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in _ = try file.rotate() } }
    done.store(true, ordering: .releasing)
    let inodeAfter = try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? NSNumber
    #expect(inodeBefore != inodeAfter)  // replaced by rename, not rewritten in place
    #expect([UInt8](try original.readToEnd() ?? Data()) == originalBytes)
    #expect(try fileMode(path) == 0o600)
    #expect(try KeyFileStore.load(path: path).file.versions.count == 31)
}

import Synchronization
