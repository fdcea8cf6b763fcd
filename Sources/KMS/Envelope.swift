// The local-KEK envelope: AES-256-GCM under a key-encryption key, in a small versioned binary format.
//
//   byte 0        format version (1)
//   bytes 1...4   key version, UInt32 big-endian (the key file's version number)
//   bytes 5...16  96-bit random nonce
//   bytes 17...   GCM ciphertext || 16-byte tag
//
// The AAD binds everything Decrypt is handed next to the ciphertext: the format version, the key version, the key_id
// and the annotations (sorted by key bytes, every field length-prefixed so no two inputs encode alike). So no field
// returned by Encrypt can be swapped or edited without the tag check failing. A 32-byte DEK seals to 65 bytes.
//
// Nonces are random per call: the apiserver calls Encrypt about once per key_id change and restart, so a KEK seals far
// fewer than the 2^32 messages that random 96-bit nonces allow.
import Crypto

public enum Envelope {
    public static let formatVersion: UInt8 = 1
    public static let headerSize = 1 + 4 + AES256GCM.nonceSize
    /// Bytes added to the plaintext: header plus tag.
    public static let overhead = headerSize + AES256GCM.tagSize

    /// Seals `plaintext` under `key`; `keyVersion`, `keyID` and `annotations` are bound as AAD.
    public static func seal(plaintext: [UInt8], key: SymmetricKey, keyVersion: UInt32, keyID: String,
                            annotations: [String: [UInt8]]) throws(KMSError) -> [UInt8] {
        try seal(plaintext: plaintext, key: key, keyVersion: keyVersion,
                 aad: additionalData(keyVersion: keyVersion, keyID: keyID, annotations: annotations))
    }

    /// `seal` with the AAD already built for `keyVersion` (a key version's own, built once per key file load).
    static func seal(plaintext: [UInt8], key: SymmetricKey, keyVersion: UInt32, aad: [UInt8]) throws(KMSError) -> [UInt8] {
        do {
            return try AES256GCM.sealWithRandomNonce(key: key, headerSize: headerSize - AES256GCM.nonceSize, plaintext: plaintext, aad: aad) { header in
                header[0] = formatVersion
                for i in 0..<4 { header[1 + i] = UInt8(truncatingIfNeeded: keyVersion >> (24 - 8 * i)) }
            }
        } catch {
            throw KMSError(.internalError, "AES-256-GCM seal: \(error)")
        }
    }

    /// The key version a ciphertext names, after checking its format and minimum length.
    public static func keyVersion(of ciphertext: [UInt8]) throws(KMSError) -> UInt32 {
        guard let first = ciphertext.first else { throw KMSError(.invalidArgument, "ciphertext is empty") }
        guard first == formatVersion else {
            throw KMSError(.invalidArgument, "ciphertext has unknown envelope format \(first) (not made by kekd's local key backend)")
        }
        guard ciphertext.count >= overhead else {
            throw KMSError(.invalidArgument, "ciphertext is truncated (\(ciphertext.count) bytes, envelope needs at least \(overhead))")
        }
        return UInt32(ciphertext[1]) << 24 | UInt32(ciphertext[2]) << 16 | UInt32(ciphertext[3]) << 8 | UInt32(ciphertext[4])
    }

    /// Opens a ciphertext made by `seal`. Any mismatch (key, key_id, annotations, edited bytes) is INVALID_ARGUMENT
    /// and no plaintext is returned.
    public static func open(ciphertext: [UInt8], key: SymmetricKey, keyID: String,
                            annotations: [String: [UInt8]]) throws(KMSError) -> [UInt8] {
        let version = try keyVersion(of: ciphertext)
        return try open(ciphertext: ciphertext, key: key,
                        aad: additionalData(keyVersion: version, keyID: keyID, annotations: annotations))
    }

    /// `open` with the AAD already built; the caller checked the ciphertext's format and that the AAD is for the key
    /// version it names (`keyVersion(of:)`).
    static func open(ciphertext: [UInt8], key: SymmetricKey, aad: [UInt8]) throws(KMSError) -> [UInt8] {
        let nonce = ciphertext[5..<headerSize]
        let sealed = ciphertext[headerSize...]
        do {
            return try AES256GCM.open(key: key, nonce: nonce, sealed: sealed, aad: aad)
        } catch .authenticationFailed {
            throw KMSError(.invalidArgument, "ciphertext failed authentication (tampered, truncated, or key_id/annotations do not match)")
        } catch {
            throw KMSError(.internalError, "AES-256-GCM open: \(error)")
        }
    }

    /// format version || key version || len(key_id) || key_id || count || (len(k) || k || len(v) || v)* sorted by k.
    static func additionalData(keyVersion: UInt32, keyID: String, annotations: [String: [UInt8]]) throws(KMSError) -> [UInt8] {
        var aad: [UInt8] = []
        aad.reserveCapacity(64 + keyID.utf8.count)
        aad.append(formatVersion)
        appendBigEndian(keyVersion, to: &aad)
        try appendLengthPrefixed(keyID.utf8, to: &aad)
        guard let count = UInt32(exactly: annotations.count) else { throw KMSError(.invalidArgument, "too many annotations") }
        appendBigEndian(count, to: &aad)
        if annotations.count == 1, let only = annotations.first {
            // The usual case (our one annotation): nothing to sort.
            try appendLengthPrefixed(only.key.utf8, to: &aad)
            try appendLengthPrefixed(only.value, to: &aad)
            return aad
        }
        let sorted = annotations.map { (key: Array($0.key.utf8), value: $0.value) }
            .sorted { $0.key.lexicographicallyPrecedes($1.key) }
        for entry in sorted {
            try appendLengthPrefixed(entry.key, to: &aad)
            try appendLengthPrefixed(entry.value, to: &aad)
        }
        return aad
    }

    private static func appendLengthPrefixed(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) throws(KMSError) {
        guard let length = UInt32(exactly: bytes.count) else { throw KMSError(.invalidArgument, "field too large") }
        appendBigEndian(length, to: &out)
        out.append(contentsOf: bytes)
    }
}

func appendBigEndian(_ value: UInt32, to out: inout [UInt8]) {
    out.append(UInt8(truncatingIfNeeded: value >> 24))
    out.append(UInt8(truncatingIfNeeded: value >> 16))
    out.append(UInt8(truncatingIfNeeded: value >> 8))
    out.append(UInt8(truncatingIfNeeded: value))
}

func bigEndianBytes(_ value: UInt32) -> [UInt8] {
    [UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16),
     UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
}
