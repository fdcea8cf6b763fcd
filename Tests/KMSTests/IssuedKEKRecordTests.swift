import Foundation
import Testing
@testable import KMS
import Logging

private func store(_ folder: TempFolder, owner: String = "vault-abc", capacity: Int = 4,
                   log: LogCollector? = nil) -> IssuedKEKStore {
    IssuedKEKStore(path: folder.file("vault-keks.json"), owner: owner, capacity: capacity, log: log?.sink ?? Logger { _ in })
}

@Test func issuedKEKRecordRoundTripsMostRecentFirstBoundedAndPrivate() throws {
    let folder = TempFolder()
    let s = store(folder)
    #expect(s.load().isEmpty)  // no file yet: an empty record, no warning
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    for i in 0..<6 { s.note(wrapped: "vault:v1:k\(i)", keyVersion: 1, now: t0 + Double(i)) }
    #expect(s.count == 4)  // the two least recently used are gone
    s.touch(wrapped: "vault:v1:k2", now: t0 + 100)
    s.touch(wrapped: "vault:v1:unknown", now: t0 + 100)  // not in the record: ignored
    s.save(now: 0)
    #expect(try fileMode(folder.file("vault-keks.json")) == 0o600)

    let again = store(folder)
    let loaded = again.load()
    #expect(loaded.count == 4)
    #expect(again.mostRecent(2).map(\.wrapped) == ["vault:v1:k2", "vault:v1:k5"])
    #expect(Set(loaded.map(\.wrapped)) == ["vault:v1:k2", "vault:v1:k3", "vault:v1:k4", "vault:v1:k5"])
    #expect(loaded.first { $0.wrapped == "vault:v1:k3" }?.created == t0 + 3)
}

@Test func issuedKEKRecordSavesMembershipAtOnceAndUseTimesRarely() throws {
    let folder = TempFolder()
    let s = store(folder)
    s.note(wrapped: "vault:v1:a", keyVersion: 1)
    s.save(now: 1000)
    let first = try readFile(folder.file("vault-keks.json"))
    s.touch(wrapped: "vault:v1:a", now: Date(timeIntervalSince1970: 2_000_000_000))
    s.save(now: 1010)  // only a use time changed, 10 s after the last write: not yet
    #expect(try readFile(folder.file("vault-keks.json")) == first)
    s.save(now: 1010, force: true)
    #expect(try readFile(folder.file("vault-keks.json")) != first)
}

@Test func aCorruptOrForeignRecordIsOneWarningAndAColdStart() throws {
    let folder = TempFolder()
    let path = folder.file("vault-keks.json")
    let other = store(folder, owner: "vault-other")
    other.note(wrapped: "vault:v1:x", keyVersion: 1)
    other.save(now: 0)
    for content in [nil, Array("{not json".utf8), Array("{\"format\":\"kekd-issued-keks-v1\",\"owner\":\"vault-abc\",\"keks\":[{\"wrapped\":1}]}".utf8),
                    Array("[]".utf8)] {
        if let content { try writeFile(path, content) }
        let log = LogCollector()
        let s = store(folder, log: log)
        #expect(s.load().isEmpty)
        #expect(log.all.count == 1)
        #expect(log.all.first?.contains("starting with a cold cache") == true)
        // The next save replaces it with a good record.
        s.note(wrapped: "vault:v1:y", keyVersion: 1)
        s.save(now: 0)
        #expect(store(folder).load().map(\.wrapped) == ["vault:v1:y"])
        other.note(wrapped: "vault:v1:z", keyVersion: 1)
        other.save(now: 0)
    }
}
