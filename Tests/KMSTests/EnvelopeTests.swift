import Crypto
import Testing
@testable import KMS

private let annotations = ["local-kek.kekd.io": Array("aes-256-gcm/1".utf8)]

@Test func envelopeRoundTripsAndHasTheDocumentedLayout() throws {
    let key = try SymmetricKey.random()
    let plaintext = Array("a 32-byte DEK seed, exactly!!!!!".utf8)
    let sealed = try Envelope.seal(plaintext: plaintext, key: key, keyVersion: 7, keyID: "kid", annotations: annotations)
    #expect(sealed.count == plaintext.count + Envelope.overhead)
    #expect(sealed[0] == Envelope.formatVersion)
    #expect(Array(sealed[1...4]) == [0, 0, 0, 7])
    #expect(try Envelope.keyVersion(of: sealed) == 7)
    #expect(try Envelope.open(ciphertext: sealed, key: key, keyID: "kid", annotations: annotations) == plaintext)
}

@Test func envelopeUsesAFreshNoncePerCall() throws {
    let key = try SymmetricKey.random()
    let a = try Envelope.seal(plaintext: [1, 2, 3], key: key, keyVersion: 1, keyID: "k", annotations: [:])
    let b = try Envelope.seal(plaintext: [1, 2, 3], key: key, keyVersion: 1, keyID: "k", annotations: [:])
    #expect(a[5..<17] != b[5..<17])
    #expect(a != b)
}

@Test func everyTamperedByteIsInvalidArgument() throws {
    let key = try SymmetricKey.random()
    let sealed = try Envelope.seal(plaintext: Array(repeating: 0x42, count: 32), key: key, keyVersion: 3, keyID: "kid", annotations: annotations)
    for index in sealed.indices {
        for flip: UInt8 in [0x01, 0x80] {
            var tampered = sealed
            tampered[index] ^= flip
            #expect(throws: KMSError.self) { try Envelope.open(ciphertext: tampered, key: key, keyID: "kid", annotations: annotations) }
            do { _ = try Envelope.open(ciphertext: tampered, key: key, keyID: "kid", annotations: annotations) } catch {
                #expect(error.code == .invalidArgument, "byte \(index)")
            }
        }
    }
    for length in 0..<sealed.count {
        do {
            _ = try Envelope.open(ciphertext: Array(sealed.prefix(length)), key: key, keyID: "kid", annotations: annotations)
            Issue.record("truncated to \(length) bytes opened")
        } catch { #expect(error.code == .invalidArgument) }
    }
}

@Test func keyIDAndAnnotationsAreBound() throws {
    let key = try SymmetricKey.random()
    let sealed = try Envelope.seal(plaintext: [9, 9], key: key, keyVersion: 1, keyID: "kid", annotations: annotations)
    let variants: [(String, [String: [UInt8]])] = [
        ("kid2", annotations),
        ("kid", [:]),
        ("kid", ["local-kek.kekd.io": Array("aes-256-gcm/2".utf8)]),
        ("kid", annotations.merging(["x.kekd.io": [1]]) { a, _ in a }),
        ("kid", ["other.kekd.io": Array("aes-256-gcm/1".utf8)]),
    ]
    for (keyID, ann) in variants {
        do {
            _ = try Envelope.open(ciphertext: sealed, key: key, keyID: keyID, annotations: ann)
            Issue.record("opened with key_id \(keyID) annotations \(ann.keys.sorted())")
        } catch { #expect(error.code == .invalidArgument) }
    }
    let other = try SymmetricKey.random()
    #expect(throws: KMSError(.invalidArgument, "ciphertext failed authentication (tampered, truncated, or key_id/annotations do not match)")) {
        try Envelope.open(ciphertext: sealed, key: other, keyID: "kid", annotations: annotations)
    }
}

@Test func additionalDataIsCanonicalAndUnambiguous() throws {
    // Map order never matters; moving bytes between key and value does.
    let a = try Envelope.additionalData(keyVersion: 1, keyID: "k", annotations: ["a.io": [1], "b.io": [2]])
    let b = try Envelope.additionalData(keyVersion: 1, keyID: "k", annotations: ["b.io": [2], "a.io": [1]])
    #expect(a == b)
    let c = try Envelope.additionalData(keyVersion: 1, keyID: "k", annotations: ["ab.io": Array("c".utf8)])
    let d = try Envelope.additionalData(keyVersion: 1, keyID: "k", annotations: ["ab.i": Array("oc".utf8)])
    #expect(c != d)
    #expect(try Envelope.additionalData(keyVersion: 1, keyID: "ka", annotations: [:]) != Envelope.additionalData(keyVersion: 2, keyID: "ka", annotations: [:]))
}

@Test func fullyQualifiedDomainNamesFollowApimachinery() {
    for good in ["local-kek.kekd.io", "a.b", "kms.example.io.", "x1-2.y"] { #expect(isFullyQualifiedDomainName(good), "\(good)") }
    for bad in ["", "kekd", "Kekd.io", "-a.io", "a-.io", "a..io", "a.io..", ".a.io", "a_b.io", "ä.io",
                String(repeating: "a", count: 64) + ".io", String(repeating: "a.", count: 127) + "io"] {
        #expect(!isFullyQualifiedDomainName(bad), "\(bad)")
    }
    #expect(throws: Never.self) { try validateAnnotations(["local-kek.kekd.io": [1]]) }
    #expect(throws: KMSError.self) { try validateAnnotations(["NotFQDN": [1]]) }
    #expect(throws: KMSError.self) { try validateAnnotations(["big.kekd.io": Array(repeating: 0, count: 32 * 1024)]) }
    #expect(throws: Never.self) { try validateAnnotations(["big.kekd.io": Array(repeating: 0, count: 32 * 1024 - 11)]) }
}
