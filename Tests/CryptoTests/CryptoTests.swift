import Testing
@testable import Crypto

private func hex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

@Test func gcmKnownAnswer() throws {
    // NIST GCM test vector (gcmEncryptExtIV256, Count 0 with 16-byte PT).
    let key = hex("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22")
    let iv = hex("0d18e06c7c725ac9e362e1ce")
    let pt = hex("2db5168e932556f8089a0622981d017d")
    let sealed = try AES256GCM.seal(key: key, nonce: iv, plaintext: pt, aad: [])
    #expect(hexString(sealed) == "fa4362189661d163fcd6a56d8bf0405a" + "d636ac1bbedd5cc3ee727dc2ab4a9489")
    #expect(try AES256GCM.open(key: key, nonce: iv, sealed: sealed, aad: []) == pt)
}

@Test func gcmRejectsTamperWrongKeyAndWrongAAD() throws {
    let key = try SecureRandom.bytes(32)
    let nonce = try SecureRandom.bytes(12)
    let pt = Array("secret seed".utf8)
    let sealed = try AES256GCM.seal(key: key, nonce: nonce, plaintext: pt, aad: Array("aad".utf8))
    for i in sealed.indices {
        var t = sealed; t[i] ^= 0x01
        #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: key, nonce: nonce, sealed: t, aad: Array("aad".utf8)) }
    }
    #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: key, nonce: nonce, sealed: sealed, aad: Array("aaD".utf8)) }
    let other = try SecureRandom.bytes(32)
    #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: other, nonce: nonce, sealed: sealed, aad: Array("aad".utf8)) }
    #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: key, nonce: nonce, sealed: Array(sealed.prefix(10)), aad: []) }
    #expect(throws: CryptoError.invalidKeySize(31)) { try AES256GCM.seal(key: Array(key.prefix(31)), nonce: nonce, plaintext: pt, aad: []) }
}

@Test func gcmEmptyPlaintext() throws {
    let key = try SecureRandom.bytes(32), nonce = try SecureRandom.bytes(12)
    let sealed = try AES256GCM.seal(key: key, nonce: nonce, plaintext: [], aad: [1, 2])
    #expect(sealed.count == 16)
    #expect(try AES256GCM.open(key: key, nonce: nonce, sealed: sealed, aad: [1, 2]) == [])
}

// Each context test runs on both digest paths: the SHA256_* functions (normal) and EVP (FIPS mode).
@Test(arguments: [false, true]) func sha256AndHMACKnownAnswers(throughEVP: Bool) {
    #expect(hexString(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    // A reused context gives every digest afresh (nothing carried over from the previous one).
    let context = SHA256Context(throughEVP: throughEVP)
    for _ in 0..<3 {
        #expect(hexString(context.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hexString(context.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }
    // RFC 4231 test case 2.
    #expect(hexString(HMACSHA256.mac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
            == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
}

@Test func hkdfRFC5869Case1() throws {
    let okm = try HKDFSHA256.derive(inputKey: [UInt8](repeating: 0x0b, count: 22), salt: hex("000102030405060708090a0b0c"),
                                    info: hex("f0f1f2f3f4f5f6f7f8f9"), length: 42)
    #expect(hexString(okm) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
}

@Test func constantTimeCompareAndWipe() throws {
    #expect(constantTimeEqual([1, 2, 3], [1, 2, 3]))
    #expect(!constantTimeEqual([1, 2, 3], [1, 2, 4]))
    #expect(!constantTimeEqual([1, 2], [1, 2, 3]))
    var b: [UInt8] = [9, 9, 9]
    wipe(&b)
    #expect(b == [0, 0, 0])
    let r1 = try SecureRandom.bytes(32), r2 = try SecureRandom.bytes(32)
    #expect(r1 != r2)
}

@Test(arguments: [false, true]) func hmacContextMatchesTheOneShotMACOverJoinedParts(throughEVP: Bool) {
    let key = Array("Jefe".utf8)
    let context = HMACSHA256Context(key: key, throughEVP: throughEVP)
    let message = Array("what do ya want for nothing?".utf8)
    // Reused: every MAC starts from the key again, never from the previous message.
    for _ in 0..<3 {
        #expect(hexString(context.mac(message[...])) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }
    #expect(context.mac(message[..<4], [], message[4...]) == HMACSHA256.mac(key: key, message: message))
    #expect(context.mac(message[..<4], message[4..<9], message[9...]) == HMACSHA256.mac(key: key, message: message))
    #expect(context.mac(message[..<4], message[4...]) == HMACSHA256.mac(key: key, message: message))
    #expect(context.mac([]) == HMACSHA256.mac(key: key, message: []))
}

@Test(arguments: [false, true]) func hmacContextHashesAKeyLongerThanABlockAndPadsOneOfExactlyABlock(throughEVP: Bool) {
    // RFC 4231 test case 6: a 131-byte key is hashed first.
    let longKey = [UInt8](repeating: 0xAA, count: 131)
    let message = Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)
    #expect(hexString(HMACSHA256Context(key: longKey, throughEVP: throughEVP).mac(message[...]))
            == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    for count in [63, 64, 65] {
        let key = (0..<count).map { UInt8($0) }
        #expect(HMACSHA256Context(key: key, throughEVP: throughEVP).mac(message[...]) == HMACSHA256.mac(key: key, message: message))
    }
}

@Test func gcmOpensSlicesOfALargerBuffer() throws {
    let key = [UInt8](repeating: 7, count: 32), nonce = [UInt8](repeating: 9, count: 12)
    let sealed = try AES256GCM.seal(key: key, nonce: nonce, plaintext: [1, 2, 3], aad: [4])
    let buffer = [0xAA] + nonce + sealed
    #expect(try AES256GCM.open(key: key, nonce: buffer[1..<13], sealed: buffer[13...], aad: [4]) == [1, 2, 3])
    var appended: [UInt8] = [0xEE]
    try AES256GCM.seal(key: key, nonce: nonce[...], plaintext: [1, 2, 3], aad: [4], appendingTo: &appended)
    #expect(appended == [0xEE] + sealed)
}

@Test func gcmUnderASymmetricKeyReusesKeyedContextsWithoutCarryingState() throws {
    // NIST vector again, now through the key's reused contexts: seal, open, a failed open (its context is dropped),
    // and back and forth between directions, each answer equal to the one-shot's.
    let keyBytes = hex("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22")
    let key = try SymmetricKey(bytes: keyBytes)
    let iv = hex("0d18e06c7c725ac9e362e1ce"), pt = hex("2db5168e932556f8089a0622981d017d")
    for round in 0..<3 {
        var sealed: [UInt8] = []
        try AES256GCM.seal(key: key, nonce: iv[...], plaintext: pt, aad: [], appendingTo: &sealed)
        #expect(hexString(sealed) == "fa4362189661d163fcd6a56d8bf0405a" + "d636ac1bbedd5cc3ee727dc2ab4a9489", "round \(round)")
        var tampered = sealed; tampered[0] ^= 1
        #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: key, nonce: iv[...], sealed: tampered[...], aad: []) }
        #expect(try AES256GCM.open(key: key, nonce: iv[...], sealed: sealed[...], aad: []) == pt)
        let nonce = try SecureRandom.bytes(12), aad = try SecureRandom.bytes(round * 7)
        var mine: [UInt8] = []
        try AES256GCM.seal(key: key, nonce: nonce[...], plaintext: pt, aad: aad, appendingTo: &mine)
        #expect(mine == (try AES256GCM.seal(key: keyBytes, nonce: nonce, plaintext: pt, aad: aad)))
        #expect(try AES256GCM.open(key: keyBytes, nonce: nonce, sealed: mine, aad: aad) == pt)
    }
}

@Test func gcmUnderASymmetricKeyFromManyThreadsAtOnce() async throws {
    let key = try SymmetricKey.random()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for task in 0..<8 {
            group.addTask {
                for i in 0..<200 {
                    let pt = [UInt8](repeating: UInt8(truncatingIfNeeded: task &+ i), count: 32), nonce = try SecureRandom.bytes(12)
                    var sealed: [UInt8] = []
                    try AES256GCM.seal(key: key, nonce: nonce[...], plaintext: pt, aad: [UInt8(task)], appendingTo: &sealed)
                    #expect(try AES256GCM.open(key: key, nonce: nonce[...], sealed: sealed[...], aad: [UInt8(task)]) == pt)
                }
            }
        }
        try await group.waitForAll()
    }
}

@Test func nonceSourceNeverHandsOutTheSameBytesTwiceAcrossRefills() throws {
    // Three pools' worth of 12-byte nonces (a pool holds 341 and 4 spare bytes): all distinct, none all zero (the
    // bytes handed out are zeroed in the pool, so a reuse would show as a zero nonce or a duplicate).
    var seen = Set<[UInt8]>()
    for _ in 0..<(3 * NonceSource.poolSize / AES256GCM.nonceSize + 5) {
        var nonce = [UInt8](repeating: 0, count: AES256GCM.nonceSize)
        try nonce.withUnsafeMutableBufferPointer { buffer throws(CryptoError) in try NonceSource.fill(buffer) }
        #expect(nonce != [UInt8](repeating: 0, count: AES256GCM.nonceSize))
        #expect(seen.insert(nonce).inserted)
    }
}

@Test func sealWithRandomNonceLaysOutHeaderNonceAndSealedBodyInOneArray() throws {
    let key = try SymmetricKey.random(), pt: [UInt8] = Array(0..<32), aad: [UInt8] = [9, 9]
    let first = try AES256GCM.sealWithRandomNonce(key: key, headerSize: 3, plaintext: pt, aad: aad) { $0.update(repeating: 0xAB) }
    let second = try AES256GCM.sealWithRandomNonce(key: key, headerSize: 3, plaintext: pt, aad: aad) { $0.update(repeating: 0xAB) }
    #expect(first.count == 3 + AES256GCM.nonceSize + pt.count + AES256GCM.tagSize)
    #expect(first.prefix(3) == [0xAB, 0xAB, 0xAB])
    #expect(first[3..<15] != second[3..<15])
    for sealed in [first, second] {
        #expect(try AES256GCM.open(key: key.bytes, nonce: Array(sealed[3..<15]), sealed: Array(sealed[15...]), aad: aad) == pt)
    }
    var tampered = first; tampered[20] ^= 1
    #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: key, nonce: tampered[3..<15], sealed: tampered[15...], aad: aad) }
    let empty = try AES256GCM.sealWithRandomNonce(key: key, headerSize: 0, plaintext: [], aad: []) { _ in }
    #expect(try AES256GCM.open(key: key, nonce: empty[0..<12], sealed: empty[12...], aad: []) == [])
}

@Test(arguments: [0, 1, 31, 32, 484, 485, 511, 512, 513, 4096, 70_000])
func gcmSealsAndOpensEverySizeOnEitherSideOfTheStackTemporary(size: Int) throws {
    // Outputs up to 512 bytes are built in a stack temporary and copied out, larger ones in place: both must give the
    // one-shot API's bytes, open what they sealed and refuse a flipped tag bit.
    let key = try SymmetricKey.random(), nonce = try SecureRandom.bytes(12)
    let pt = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    var sealed: [UInt8] = []
    try AES256GCM.seal(key: key, nonce: nonce[...], plaintext: pt, aad: [1], appendingTo: &sealed)
    #expect(sealed == (try AES256GCM.seal(key: key.bytes, nonce: nonce, plaintext: pt, aad: [1])))
    #expect(try AES256GCM.open(key: key, nonce: nonce[...], sealed: sealed[...], aad: [1]) == pt)
    var tampered = sealed; tampered[tampered.count - 1] ^= 1
    #expect(throws: CryptoError.authenticationFailed) { try AES256GCM.open(key: key, nonce: nonce[...], sealed: tampered[...], aad: [1]) }
    let framed = try AES256GCM.sealWithRandomNonce(key: key, headerSize: 2, plaintext: pt, aad: []) { $0.update(repeating: 5) }
    #expect(try AES256GCM.open(key: key, nonce: framed[2..<14], sealed: framed[14...], aad: []) == pt)
}
