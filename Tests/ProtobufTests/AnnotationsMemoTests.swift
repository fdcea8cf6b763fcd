import Testing
import Protobuf
import KMSProto

@Suite struct AnnotationsMemoTests {
    private func request(_ annotations: [String: [UInt8]], uid: String = "u", keyID: String = "k") -> [UInt8] {
        DecryptRequest(ciphertext: [1, 2, 3], uid: uid, keyID: keyID, annotations: annotations).serializedBytes()
    }

    /// With a memo, every request decodes exactly as without one, whether its annotations repeat or change.
    @Test func memoizedDecodeMatchesPlainDecode() throws {
        var memo = AnnotationsMemo()
        let sequence: [[String: [UInt8]]] = [
            ["a.example.com": [1]], ["a.example.com": [1]], ["a.example.com": [2]], [:],
            ["a.example.com": [2], "b.example.com": []], ["a.example.com": [2], "b.example.com": []], ["a.example.com": [1]],
        ]
        for (index, annotations) in sequence.enumerated() {
            let bytes = request(annotations, uid: "u\(index)")
            let memoized = try DecryptRequest(serializedBytes: bytes[...], memo: &memo)
            #expect(memoized == (try DecryptRequest(serializedBytes: bytes)))
            #expect(memoized.annotations == annotations && memoized.uid == "u\(index)")
        }
    }

    /// The key_id follows each request's bytes, whether it repeats or changes; one that is not UTF-8 is an error.
    @Test func keyIDFollowsTheBytes() throws {
        var memo = AnnotationsMemo()
        for keyID in ["kekd-v1-aaaaaaaaaaaaaaaaaaaa", "kekd-v1-aaaaaaaaaaaaaaaaaaaa", "kekd-v2-aaaaaaaaaaaaaaaaaaaa", "", "k",
                      "kekd-v2-aaaaaaaaaaaaaaaaaaaa"] {
            let bytes = request(["a.example.com": [1]], keyID: keyID)
            #expect(try DecryptRequest(serializedBytes: bytes[...], memo: &memo).keyID == keyID)
        }
        // Field 3 = "\xff".
        let bad: [UInt8] = [0x0a, 1, 7, 0x1a, 1, 0xff]
        #expect(throws: ProtobufError.invalidUTF8(field: 3)) { try DecryptRequest(serializedBytes: bad[...], memo: &memo) }
        // A bad key_id followed by the memo's own key_id: the last occurrence wins, but every one must be UTF-8.
        let hidden = bad + [0x1a, 28] + Array("kekd-v2-aaaaaaaaaaaaaaaaaaaa".utf8)
        #expect(throws: ProtobufError.invalidUTF8(field: 3)) { try DecryptRequest(serializedBytes: hidden[...], memo: &memo) }
    }

    /// A request whose annotation key is not UTF-8 fails as before and leaves the memo as it was.
    @Test func invalidEntryIsAnErrorAndNotRemembered() throws {
        var memo = AnnotationsMemo()
        let good = request(["a.example.com": [1]])
        _ = try DecryptRequest(serializedBytes: good[...], memo: &memo)
        // Field 4 entry {1: "\xff", 2: [9]}.
        let bad: [UInt8] = [0x0a, 1, 7, 0x22, 6, 0x0a, 1, 0xff, 0x12, 1, 9]
        #expect(throws: ProtobufError.self) { try DecryptRequest(serializedBytes: bad[...], memo: &memo) }
        #expect(try DecryptRequest(serializedBytes: good[...], memo: &memo).annotations == ["a.example.com": [1]])
    }
}
