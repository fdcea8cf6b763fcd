import Crypto
import Foundation
import KMSProto
import Testing
@testable import KMS
import Logging

/// Replays the envelope and keyfile fuzz corpora (Tests/Fuzz/corpus/{envelope,keyfile}: seeds, and every input the
/// fuzzer ever tripped on once fixed), so `swift test` keeps them as regression tests. Input layouts are described
/// in Tests/Fuzz/envelope/main.swift and Tests/Fuzz/keyfile/main.swift.
struct FuzzCorpusTests {
    static let corpora = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz/corpus")
    static let marker: [UInt8] = [0xFE, 0xFD, 0xFC]

    static func corpus(_ target: String) -> [(name: String, bytes: [UInt8])] {
        let folder = corpora.appendingPathComponent(target)
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).sorted()
        return names.compactMap { name in
            (try? Data(contentsOf: folder.appendingPathComponent(name))).map { (name, [UInt8]($0)) }
        }
    }

    /// The envelope harness's key set: version 2 retired, 3 active, 4 primary, from fixed bytes.
    static func envelopeService(folder: TempFolder) throws -> KMSService {
        var file = try KeyFile.parse([UInt8](repeating: 7, count: 32))
        file.fileID = Array(SHA256.hash(Array("kekd fuzz file id".utf8)).prefix(16))
        file.auditSecret = SHA256.hash(Array("kekd fuzz audit secret".utf8))
        file.versions = [(2, KeyState.retired), (3, .active), (4, .primary)].map { version, state in
            KeyVersion(version: version, state: state, created: "2026-11-25T12:00:00Z",
                       key: SHA256.hash(Array("kekd fuzz key v\(version)".utf8)))
        }
        try KeyFileStore.create(path: folder.file("keys.json"), file: file)
        return KMSService(backend: try FileKeyBackend(keyFilePath: folder.file("keys.json"), pollInterval: nil, log: Logger { _ in }))
    }

    @Test func envelopeCorpusDecryptsOnlyGenuineCiphertexts() throws {
        let folder = TempFolder()
        let service = try Self.envelopeService(folder: folder)
        let inputs = Self.corpus("envelope")
        #expect(inputs.count >= 10, "the envelope seed corpus is missing")
        var opened: [String] = []
        for (name, input) in inputs where input.first.map({ $0 & 1 == 0 }) ?? false {
            let fields = input.dropFirst().split(separator: Self.marker, omittingEmptySubsequences: false)
            func text(_ i: Int) -> String { i < fields.count ? String(decoding: fields[i], as: UTF8.self) : "" }
            var annotations: [String: [UInt8]] = [:]
            var i = 3
            while i < fields.count {
                annotations[text(i)] = i + 1 < fields.count ? Array(fields[i + 1]) : []
                i += 2
            }
            let request = DecryptRequest(ciphertext: Array(fields[0]), uid: text(2), keyID: text(1), annotations: annotations)
            do {
                let plaintext = try service.decrypt(request).plaintext
                #expect(plaintext.starts(with: Array("kekd-fuzz-genuine-".utf8)), "\(name)")
                opened.append(name)
            } catch {
                #expect(error.code == .invalidArgument || error.code == .failedPrecondition, "\(name): \(error)")
            }
        }
        #expect(opened == ["encrypt-result-primary", "genuine-v3-active", "genuine-v3-two-annotations", "genuine-v4-primary"])
    }

    @Test func keyFileCorpusParsesOrFailsCleanly() throws {
        let inputs = Self.corpus("keyfile")
        #expect(inputs.count >= 10, "the keyfile seed corpus is missing")
        for (name, input) in inputs {
            do {
                let file = try KeyFile.parse(Array(input.dropFirst()))
                try file.validate()
                #expect(try KeyFile.parse(file.serialized()) == file, "\(name)")
            } catch {
                // Seeds are real key files (from kekctl or the first format); only crash inputs may be rejected.
                #expect(name.hasPrefix("crash-") || name.hasPrefix("regression-"), "\(name): \(error)")
                #expect(error.code == .failedPrecondition, "\(name): \(error)")
            }
        }
    }
}
