// Pure rules of the HSM key family: object labels (`L-v1`, `L-v2`, … and the retirement marker), which version
// encrypts, the key_id, and the text form of a wrapped local KEK. No module needed; unit-tested.
import Crypto

/// One version of the key family as found on the token.
public struct KeyFamilyVersion: Sendable, Equatable {
    public var version: Int
    public var retired: Bool
    /// The object's CKA_ID: random at creation, so a recreated `L-v2` gets a different key_id.
    public var id: [UInt8]
    public var handle: UInt
    public init(version: Int, retired: Bool, id: [UInt8], handle: UInt) {
        self.version = version; self.retired = retired; self.id = id; self.handle = handle
    }
}

public enum KeyFamily {
    /// Retirement renames `L-vN` to `L-vN-retired` (CKA_LABEL is modifiable; the key_id does not include the label).
    public static let retiredSuffix = "-retired"

    public static func label(family: String, version: Int, retired: Bool = false) -> String {
        "\(family)-v\(version)" + (retired ? retiredSuffix : "")
    }

    /// (version, retired) when `label` names a version of `family`, else nil.
    public static func parse(label: String, family: String) -> (version: Int, retired: Bool)? {
        var rest = Substring(label)
        guard rest.hasPrefix(family + "-v") else { return nil }
        rest = rest.dropFirst(family.count + 2)
        let retired = rest.hasSuffix(retiredSuffix)
        if retired { rest = rest.dropLast(retiredSuffix.count) }
        guard (1...9).contains(rest.count), rest.allSatisfy({ $0.isASCII && $0.isNumber }), rest.first != "0",
              let version = Int(rest) else { return nil }
        return (version, retired)
    }

    /// The versions of `family` among `objects`. Two objects claiming one version make the family ambiguous: that
    /// is an error, never a guess.
    public static func versions(of objects: [KeyObject], family: String) throws(PKCS11Error) -> [KeyFamilyVersion] {
        var byVersion: [Int: KeyFamilyVersion] = [:]
        for object in objects {
            guard let (version, retired) = parse(label: object.label, family: family) else { continue }
            if byVersion[version] != nil {
                throw PKCS11Error(rv: nil, "two key objects on the token are version \(version) of \(family); remove one")
            }
            guard !object.id.isEmpty else { throw PKCS11Error(rv: nil, "key object \(object.label) has no CKA_ID") }
            byVersion[version] = KeyFamilyVersion(version: version, retired: retired, id: object.id, handle: object.handle)
        }
        return byVersion.values.sorted { $0.version < $1.version }
    }

    /// The highest version that is not retired.
    public static func primary(_ versions: [KeyFamilyVersion]) -> KeyFamilyVersion? {
        versions.filter { !$0.retired }.max { $0.version < $1.version }
    }

    /// `kekd-pkcs11-<32 hex>-v<N>`: opaque, non-secret, never reused (token serial, family, version and the object's
    /// random CKA_ID go into the hash).
    public static func keyID(tokenSerial: String, family: String, version: Int, id: [UInt8]) -> String {
        var input: [UInt8] = []
        for field in ["kekd-pkcs11-key-id-v1", tokenSerial, family, String(version), hexString(id)] { input += Array(field.utf8) + [0] }
        return "kekd-pkcs11-" + hexString(SHA256.hash(input).prefix(16)) + "-v\(version)"
    }

    /// The version a key_id of our format names, or nil.
    public static func version(ofKeyID keyID: String) -> Int? {
        // On the UTF-8 bytes: this runs on every Decrypt, and Character properties (isHexDigit, isUppercase) cost a
        // Unicode table lookup each.
        let bytes = keyID.utf8
        let prefix = "kekd-pkcs11-".utf8
        guard bytes.count <= 64, bytes.starts(with: prefix) else { return nil }
        let rest = bytes.dropFirst(prefix.count)
        guard rest.count >= 35, rest.prefix(32).allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
        let tail = rest.dropFirst(32)
        guard tail.starts(with: "-v".utf8) else { return nil }
        let digits = tail.dropFirst(2)
        // No sign, no leading zero: one spelling per version.
        guard let first = digits.first, first >= 49, first <= 57, digits.count <= 9,
              digits.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return digits.reduce(0) { $0 * 10 + Int($1 - 48) }
    }
}

/// A local KEK wrapped by the HSM key: `p11:v<N>:<CKA_ID hex>:<IV hex>:<ciphertext+tag hex>` (text, so it is the
/// cache key and the annotation value as is).
public struct WrappedLocalKEK: Sendable, Equatable {
    public static let ivSize = 12
    public var version: Int
    public var keyObjectID: [UInt8]
    public var iv: [UInt8]
    public var sealed: [UInt8]

    public init(version: Int, keyObjectID: [UInt8], iv: [UInt8], sealed: [UInt8]) {
        self.version = version; self.keyObjectID = keyObjectID; self.iv = iv; self.sealed = sealed
    }

    public var text: String {
        "p11:v\(version):\(hexString(keyObjectID)):\(hexString(iv)):\(hexString(sealed))"
    }

    /// Parses the annotation; nil for anything malformed (bounded sizes).
    public init?(text bytes: [UInt8]) {
        guard bytes.count <= 512, bytes.starts(with: "p11:v".utf8) else { return nil }
        let parts = bytes.dropFirst(4).split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        let digits = parts[0].dropFirst()
        guard (1...9).contains(digits.count), digits.allSatisfy({ $0 >= 48 && $0 <= 57 }), digits.first != 48 else { return nil }
        guard let id = Self.hexBytes(parts[1]), !id.isEmpty, let iv = Self.hexBytes(parts[2]), iv.count == Self.ivSize,
              let sealed = Self.hexBytes(parts[3]), sealed.count == AES256GCM.keySize + AES256GCM.tagSize else { return nil }
        self.init(version: digits.reduce(0) { $0 * 10 + Int($1 - 48) }, keyObjectID: id, iv: iv, sealed: sealed)
    }

    static func hexBytes(_ text: some Collection<UInt8>) -> [UInt8]? {
        guard text.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 2)
        var it = text.makeIterator()
        while let hi = it.next(), let lo = it.next() {
            guard let h = nibble(hi), let l = nibble(lo) else { return nil }
            out.append(h << 4 | l)
        }
        return out
    }
}
