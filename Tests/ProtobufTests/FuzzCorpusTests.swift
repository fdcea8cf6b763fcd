import Foundation
import Testing
import Protobuf
import KMSProto

/// Replays the protobuf fuzz corpus (Tests/Fuzz/corpus/protobuf: seeds, and any crash input once fixed) through the
/// fuzz harness's checks, so every input the fuzzer ever tripped on stays a regression test in `swift test`.
struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/protobuf")

    static func corpusFiles() -> [URL] {
        let files = (try? FileManager.default.contentsOfDirectory(at: corpus, includingPropertiesForKeys: nil)) ?? []
        return files.sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    /// Whatever decodes re-encodes to bytes that decode to the same message and re-encode identically.
    func expectStable<Message: ProtoMessage>(_ type: Message.Type, _ input: [UInt8], _ name: String) -> Bool {
        guard let message = try? Message(serializedBytes: input) else { return false }
        let encoded = message.serializedBytes()
        let again = try? Message(serializedBytes: encoded)
        #expect(again == message, "\(name) as \(Message.self)")
        #expect(again?.serializedBytes() == encoded, "\(name) as \(Message.self)")
        return true
    }

    @Test func everyCorpusInputDecodesStablyOrFailsCleanly() throws {
        let files = Self.corpusFiles()
        #expect(files.count >= 10, "the seed corpus is missing")
        for file in files {
            let input = [UInt8](try Data(contentsOf: file))
            let name = file.lastPathComponent
            let decodedAs = [
                ("StatusRequest", expectStable(StatusRequest.self, input, name)),
                ("StatusResponse", expectStable(StatusResponse.self, input, name)),
                ("EncryptRequest", expectStable(EncryptRequest.self, input, name)),
                ("EncryptResponse", expectStable(EncryptResponse.self, input, name)),
                ("DecryptRequest", expectStable(DecryptRequest.self, input, name)),
                ("DecryptResponse", expectStable(DecryptResponse.self, input, name)),
            ]
            // Seeds are named after the message they hold ("decrypt-request-..."): that type must accept them.
            let namedType = name.split(separator: "-").prefix(2).map { $0.capitalized }.joined()
            if let expected = decodedAs.first(where: { $0.0 == namedType }) {
                #expect(expected.1, "\(name) does not decode as \(namedType)")
            }
        }
    }

    @Test func seedsHoldTheRealMessages() throws {
        let encrypt = try EncryptRequest(serializedBytes: [UInt8](Data(contentsOf: Self.corpus.appendingPathComponent("encrypt-request-32-byte-dek"))))
        #expect(encrypt.plaintext.count == 32)
        #expect(encrypt.uid.count == 36)
        let decrypt = try DecryptRequest(serializedBytes: [UInt8](Data(contentsOf: Self.corpus.appendingPathComponent("decrypt-request-annotations"))))
        #expect(decrypt.annotations.count == 2)
        #expect(decrypt.keyID == "k-1a2b3c4d5e6f7a8b")
    }
}
