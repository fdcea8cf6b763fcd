// The envelope of the backends with a local KEK (Vault's layout, shared for new backends): version byte, 96-bit
// nonce, AES-256-GCM ciphertext and tag, with the key_id and every annotation bound in the AAD under a per-backend
// domain string. (VaultKeyring still has its own copy of the same layout; it can call this one.)
import Crypto

public enum LocalKEKEnvelope {
    public static let formatVersion: UInt8 = 1

    /// Whether `ciphertext` has this layout's version byte and room for nonce and tag.
    public static func isWellFormed(_ ciphertext: [UInt8]) -> Bool {
        ciphertext.count >= 1 + AES256GCM.nonceSize + AES256GCM.tagSize && ciphertext[0] == formatVersion
    }

    public static func seal(_ plaintext: [UInt8], key: SymmetricKey, domain: String, keyID: String,
                            annotations: [String: [UInt8]]) throws(KMSError) -> [UInt8] {
        do {
            return try AES256GCM.sealWithRandomNonce(key: key, headerSize: 1, plaintext: plaintext,
                                                     aad: aad(domain: domain, keyID: keyID, annotations: annotations)) {
                $0[0] = formatVersion
            }
        } catch {
            throw KMSError(.internalError, "local encryption failed: \(error.description)")
        }
    }

    /// A tampered or foreign envelope is the caller's bad input (INVALID_ARGUMENT), as in the file backend.
    public static func open(_ ciphertext: [UInt8], key: SymmetricKey, domain: String, keyID: String,
                            annotations: [String: [UInt8]]) throws(KMSError) -> [UInt8] {
        guard isWellFormed(ciphertext) else { throw KMSError(.invalidArgument, "ciphertext is not a kekd local-KEK envelope") }
        do {
            return try AES256GCM.open(key: key, nonce: ciphertext[1...AES256GCM.nonceSize],
                                      sealed: ciphertext[(1 + AES256GCM.nonceSize)...],
                                      aad: aad(domain: domain, keyID: keyID, annotations: annotations))
        } catch {
            throw KMSError(.invalidArgument, "ciphertext or annotations failed authentication")
        }
    }

    /// `domain`, then the key_id and every annotation (name, value; sorted by name), each with a 32-bit length.
    public static func aad(domain: String, keyID: String, annotations: [String: [UInt8]]) -> [UInt8] {
        var out = Array(domain.utf8)
        func put(_ bytes: [UInt8]) {
            out += bigEndianBytes(UInt32(truncatingIfNeeded: bytes.count)) + bytes
        }
        put(Array(keyID.utf8))
        for name in annotations.keys.sorted() {
            put(Array(name.utf8))
            put(annotations[name] ?? [])
        }
        return out
    }
}
