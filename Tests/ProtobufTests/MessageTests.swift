import Testing
import Protobuf
import KMSProto

struct MessageEncodingTests {
    @Test func defaultMessagesEncodeToNothing() throws {
        #expect(StatusRequest().serializedBytes() == [])
        #expect(StatusResponse().serializedBytes() == [])
        #expect(EncryptRequest().serializedBytes() == [])
        #expect(EncryptResponse().serializedBytes() == [])
        #expect(DecryptRequest().serializedBytes() == [])
        #expect(DecryptResponse().serializedBytes() == [])
        #expect(try DecryptRequest(serializedBytes: []) == DecryptRequest())
        #expect(try StatusResponse(serializedBytes: []) == StatusResponse())
    }

    @Test func encodesKnownBytes() {
        #expect(hexString(StatusResponse(version: "v2", healthz: "ok", keyID: "k1").serializedBytes())
            == "0a02763212026f6b1a026b31")
        #expect(hexString(EncryptRequest(plaintext: [1, 2, 3], uid: "a").serializedBytes()) == "0a03010203120161")
        #expect(hexString(DecryptResponse(plaintext: [9]).serializedBytes()) == "0a0109")
        let decrypt = DecryptRequest(ciphertext: [0xAA], uid: "u", keyID: "k", annotations: ["b.io": [2], "a.io": [1]])
        #expect(hexString(decrypt.serializedBytes())
            == "0a01aa" + "120175" + "1a016b" + "2209" + "0a04612e696f120101" + "2209" + "0a04622e696f120102")
        let encrypt = EncryptResponse(ciphertext: [0xAA], keyID: "k", annotations: ["a.io": []])
        // Map entries always carry key and value, even an empty value (as Google's encoders write them).
        #expect(hexString(encrypt.serializedBytes()) == "0a01aa" + "12016b" + "1a08" + "0a04612e696f1200")
    }

    @Test func omitsEmptyFieldsButKeepsOthers() {
        #expect(hexString(StatusResponse(version: "", healthz: "ok", keyID: "").serializedBytes()) == "12026f6b")
        #expect(hexString(DecryptRequest(keyID: "k").serializedBytes()) == "1a016b")
    }

    @Test func roundTripsEveryMessage() throws {
        var rng = SeededGenerator(seed: 42)
        for _ in 0..<200 {
            let status = StatusResponse(version: rng.string(), healthz: rng.string(), keyID: rng.string())
            #expect(try StatusResponse(serializedBytes: status.serializedBytes()) == status)
            let encrypt = EncryptRequest(plaintext: rng.bytes(), uid: rng.string())
            #expect(try EncryptRequest(serializedBytes: encrypt.serializedBytes()) == encrypt)
            let encrypted = EncryptResponse(ciphertext: rng.bytes(), keyID: rng.string(), annotations: rng.annotations())
            #expect(try EncryptResponse(serializedBytes: encrypted.serializedBytes()) == encrypted)
            let decrypt = DecryptRequest(ciphertext: rng.bytes(), uid: rng.string(), keyID: rng.string(),
                                         annotations: rng.annotations())
            #expect(try DecryptRequest(serializedBytes: decrypt.serializedBytes()) == decrypt)
            let decrypted = DecryptResponse(plaintext: rng.bytes())
            #expect(try DecryptResponse(serializedBytes: decrypted.serializedBytes()) == decrypted)
        }
        #expect(try StatusRequest(serializedBytes: StatusRequest().serializedBytes()) == StatusRequest())
    }

    @Test func roundTripsAOneMebibytePlaintext() throws {
        let plaintext = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let bytes = EncryptRequest(plaintext: plaintext, uid: "x").serializedBytes()
        #expect(Array(bytes.prefix(5)) == hexBytes("0a 80804000"))
        #expect(try EncryptRequest(serializedBytes: bytes).plaintext == plaintext)
    }

    @Test func decodesFromASliceOfALargerBuffer() throws {
        let message = EncryptRequest(plaintext: [1, 2, 3], uid: "uid")
        let framed = [0xFF, 0xFF] + message.serializedBytes() + [0xFF]
        #expect(try EncryptRequest(serializedBytes: framed[2..<(framed.count - 1)]) == message)
    }

    @Test func mapEncodingIsIndependentOfInsertionOrder() {
        var rng = SeededGenerator(seed: 3)
        for _ in 0..<50 {
            let entries = (0..<Int.random(in: 2...10, using: &rng)).map { _ in (rng.string(), rng.bytes()) }
            var forward: [String: [UInt8]] = [:]
            for (key, value) in entries { forward[key] = value }
            var backward: [String: [UInt8]] = [:]
            for (key, value) in entries.reversed() where forward[key] == value { backward[key] = value }
            for (key, value) in entries.shuffled(using: &rng) { backward[key] = forward[key] ?? value }
            #expect(forward == backward)
            #expect(DecryptRequest(annotations: forward).serializedBytes()
                == DecryptRequest(annotations: backward).serializedBytes())
            #expect(EncryptResponse(annotations: forward).serializedBytes()
                == EncryptResponse(annotations: backward).serializedBytes())
        }
    }

    @Test func mapEntriesAreSortedByKeyBytesNotStringOrder() {
        // "e\u{301}" (65 cc 81) sorts before "f" (66) by bytes, but after it in String order (é = U+00E9 > U+0066).
        let request = DecryptRequest(annotations: ["f": [1], "e\u{301}": [2]])
        #expect(hexString(request.serializedBytes()) == "2208" + "0a0365cc81120102" + "2206" + "0a0166120101")
    }
}

struct MessageDecodingTests {
    @Test func lastOccurrenceOfAScalarFieldWins() throws {
        let input = hexBytes("0a0101 120161 0a020202 120162")
        #expect(try EncryptRequest(serializedBytes: input) == EncryptRequest(plaintext: [2, 2], uid: "b"))
        let status = hexBytes("0a0178 0a027632 12026f6b 1a016b 1a026b31")
        #expect(try StatusResponse(serializedBytes: status) == StatusResponse(version: "v2", healthz: "ok", keyID: "k1"))
    }

    @Test func repeatedMapEntriesMergeAndLaterDuplicateWins() throws {
        let input = hexBytes("2206 0a0161120101  2206 0a0162120102  2206 0a0161120103")
        #expect(try DecryptRequest(serializedBytes: input).annotations == ["a": [3], "b": [2]])
    }

    @Test func mapEntriesInAnyOrderDecodeToTheSameMessage() throws {
        let entries = ["2206 0a0161120101", "2206 0a0162120102", "2206 0a0163120103", "0a01aa"]
        let expected = DecryptRequest(ciphertext: [0xAA], annotations: ["a": [1], "b": [2], "c": [3]])
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
            let input = hexBytes(order.map { entries[$0] }.joined())
            let decoded = try DecryptRequest(serializedBytes: input)
            #expect(decoded == expected)
            #expect(decoded.serializedBytes() == expected.serializedBytes())
        }
    }

    @Test func mapEntryWithMissingKeyOrValueMeansEmpty() throws {
        // {}, then {value: 01} (same empty key, later wins), {key: "k"}, and {value, key} in reverse field order.
        let input = hexBytes("1a00  1a03 120101  1a03 0a016b  1a06 120102 0a0162")
        #expect(try EncryptResponse(serializedBytes: input).annotations == ["": [1], "k": [], "b": [2]])
    }

    @Test func mapEntrySkipsUnknownFieldsInside() throws {
        let input = hexBytes("220f 0a0161 1805 120109 2504030201 3000")
        #expect(try DecryptRequest(serializedBytes: input).annotations == ["a": [9]])
    }

    @Test func skipsUnknownFieldsOfEveryWireTypeInEveryMessage() throws {
        let unknown = hexBytes("a006 ffffffffffffffffff01  a106 0102030405060708  a206 03 aabbcc  a506 01020304")
        #expect(try StatusRequest(serializedBytes: unknown) == StatusRequest())
        let encrypt = EncryptRequest(plaintext: [1], uid: "u")
        #expect(try EncryptRequest(serializedBytes: unknown + encrypt.serializedBytes() + unknown) == encrypt)
        let status = StatusResponse(version: "v2", healthz: "ok", keyID: "k")
        #expect(try StatusResponse(serializedBytes: unknown + status.serializedBytes() + unknown) == status)
        let decrypt = DecryptRequest(ciphertext: [1], uid: "u", keyID: "k", annotations: ["a.b": [1]])
        #expect(try DecryptRequest(serializedBytes: decrypt.serializedBytes() + unknown) == decrypt)
        let encrypted = EncryptResponse(ciphertext: [1], keyID: "k", annotations: ["a.b": [1]])
        #expect(try EncryptResponse(serializedBytes: unknown + encrypted.serializedBytes()) == encrypted)
        let decrypted = DecryptResponse(plaintext: [1])
        #expect(try DecryptResponse(serializedBytes: unknown + decrypted.serializedBytes()) == decrypted)
    }

    @Test func knownFieldWithAnotherWireTypeIsSkippedAsUnknown() throws {
        // plaintext as varint, uid as fixed32, then the real fields; Google's parsers do the same.
        let input = hexBytes("0805 1501020304 0a0101 120161 08ff01")
        #expect(try EncryptRequest(serializedBytes: input) == EncryptRequest(plaintext: [1], uid: "a"))
    }

    static let stringFields: [(String, @Sendable (ArraySlice<UInt8>) throws(ProtobufError) -> Void, Int)] = [
        ("StatusResponse.version", { bytes throws(ProtobufError) in _ = try StatusResponse(serializedBytes: bytes) }, 1),
        ("StatusResponse.healthz", { bytes throws(ProtobufError) in _ = try StatusResponse(serializedBytes: bytes) }, 2),
        ("StatusResponse.key_id", { bytes throws(ProtobufError) in _ = try StatusResponse(serializedBytes: bytes) }, 3),
        ("EncryptRequest.uid", { bytes throws(ProtobufError) in _ = try EncryptRequest(serializedBytes: bytes) }, 2),
        ("EncryptResponse.key_id", { bytes throws(ProtobufError) in _ = try EncryptResponse(serializedBytes: bytes) }, 2),
        ("DecryptRequest.uid", { bytes throws(ProtobufError) in _ = try DecryptRequest(serializedBytes: bytes) }, 2),
        ("DecryptRequest.key_id", { bytes throws(ProtobufError) in _ = try DecryptRequest(serializedBytes: bytes) }, 3),
    ]

    @Test func rejectsInvalidUTF8InEveryStringField() {
        for (name, decode, field) in Self.stringFields {
            for bad in ["ff", "c0af", "eda080", "e282", "6f6b80"] {
                var input: [UInt8] = [UInt8(field << 3 | 2), UInt8(hexBytes(bad).count)] + hexBytes(bad)
                #expect(throws: ProtobufError.invalidUTF8(field: field), "\(name) \(bad)") { try decode(input[...]) }
                // Every occurrence is checked (as protobuf-go and upb do), not only the last one, which is kept.
                let repeated = input + [UInt8(field << 3 | 2), 2, 0x6f, 0x6b]
                #expect(throws: ProtobufError.invalidUTF8(field: field), "\(name) \(bad) then ok") { try decode(repeated[...]) }
                // The same field with valid UTF-8 decodes, so the error is about the bytes, not the field.
                input = [UInt8(field << 3 | 2), 2, 0x6f, 0x6b]
                #expect(throws: Never.self, "\(name)") { try decode(input[...]) }
            }
        }
    }

    @Test func rejectsInvalidUTF8InMapKeysButNotValues() throws {
        #expect(throws: ProtobufError.invalidUTF8(field: 4)) {
            try DecryptRequest(serializedBytes: hexBytes("2205 0a01ff 1200"))
        }
        #expect(throws: ProtobufError.invalidUTF8(field: 3)) {
            try EncryptResponse(serializedBytes: hexBytes("1a06 0a02c328 1200"))
        }
        // Values are `bytes`: anything goes.
        #expect(try DecryptRequest(serializedBytes: hexBytes("2206 0a0161 1201ff")).annotations == ["a": [0xFF]])
        // Bytes fields are not validated either.
        #expect(try DecryptResponse(serializedBytes: hexBytes("0a02ffc0")).plaintext == [0xFF, 0xC0])
    }

    static let malformed: [(String, String, ProtobufError)] = [
        ("truncated tag varint", "0a0101 80", .truncated),
        ("truncated unknown varint", "a006 8080", .truncated),
        ("overlong tag varint", "8080808080808080808001", .malformedVarint),
        ("length past the end", "0a05 0102", .lengthOutOfRange),
        ("length varint truncated", "0a80", .truncated),
        ("huge length", "0affffffffffffffffff01", .lengthOutOfRange),
        ("group start", "0b 0c", .invalidWireType(3)),
        ("group end", "0c", .invalidWireType(4)),
        ("wire type 6", "0e", .invalidWireType(6)),
        ("wire type 7", "0f", .invalidWireType(7)),
        ("field zero", "0201 00", .invalidFieldNumber(0)),
        ("truncated fixed32", "a506 0102", .truncated),
        ("truncated fixed64", "a106 01020304050607", .truncated),
    ]

    @Test func rejectsMalformedInputInEveryMessage() {
        for (name, hex, error) in Self.malformed {
            let input = hexBytes(hex)
            #expect(throws: error, "\(name)") { try StatusRequest(serializedBytes: input) }
            #expect(throws: error, "\(name)") { try StatusResponse(serializedBytes: input) }
            #expect(throws: error, "\(name)") { try EncryptRequest(serializedBytes: input) }
            #expect(throws: error, "\(name)") { try EncryptResponse(serializedBytes: input) }
            #expect(throws: error, "\(name)") { try DecryptRequest(serializedBytes: input) }
            #expect(throws: error, "\(name)") { try DecryptResponse(serializedBytes: input) }
        }
    }

    @Test func rejectsMalformedMapEntries() {
        let cases: [(String, ProtobufError)] = [
            ("2203 0a0561", .lengthOutOfRange),     // key length past the entry's end
            ("2202 0b0c", .invalidWireType(3)),     // group inside the entry
            ("2201 00", .invalidFieldNumber(0)),
            ("2201 80", .truncated),
            ("2204 0a0161", .lengthOutOfRange),    // entry length past the message's end
        ]
        for (hex, error) in cases {
            #expect(throws: error, "\(hex)") { try DecryptRequest(serializedBytes: hexBytes(hex)) }
            let asEncryptResponse = [0x1a] + hexBytes(hex).dropFirst()
            #expect(throws: error, "\(hex)") { try EncryptResponse(serializedBytes: asEncryptResponse) }
        }
    }

    @Test func everyTruncationOfAValidMessageIsAnErrorOrAPrefix() {
        // Cutting a message anywhere must never trap; cuts inside a field are errors.
        let full = DecryptRequest(ciphertext: [UInt8](repeating: 1, count: 40), uid: "uid-1", keyID: "key",
                                  annotations: ["kms.example.io": [1, 2], "b.example.io": []]).serializedBytes()
        var errors = 0
        for cut in 0..<full.count {
            if (try? DecryptRequest(serializedBytes: full[0..<cut])) == nil { errors += 1 }
        }
        #expect(errors >= full.count - 6)  // only cuts at field boundaries parse
    }
}
