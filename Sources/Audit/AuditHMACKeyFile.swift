// The audit chain's key from a file (--audit-hmac-key-file). Accepted contents:
//   - text (printable ASCII and whitespace only), surrounding whitespace ignored:
//       64 or more hex digits (an even count) → the decoded bytes, else
//       base64 (standard alphabet, padding optional) decoding to 32 or more bytes → the decoded bytes;
//     any other text is refused (a short or mistyped text key must not silently become a weak raw key)
//   - binary (any other byte present): 32 or more raw bytes, used as they are
// The key is secret: the file must be a regular file not readable or writable by group or others (0600/0400).
import Crypto
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

public enum AuditHMACKeyFile {
    public static let minimumKeySize = 32

    public static func load(path: String) throws(AuditError) -> [UInt8] {
        var st = stat()
        guard stat(path, &st) == 0 else { throw AuditError("cannot read audit HMAC key file \(path): \(POSIXFile.errorText(errno))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw AuditError("audit HMAC key file \(path) is not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw AuditError("audit HMAC key file \(path) is accessible by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        var contents = try POSIXFile.read(path: path, limit: 64 << 10)
        defer { wipe(&contents) }
        return try parse(contents)
    }

    /// For backends that cannot derive a chain key (Vault): loads the file, or when it does not exist creates it
    /// with 32 random bytes as hex (mode 0600, atomically, never replacing a file another process created first).
    public static func loadOrCreate(path: String) throws(AuditError) -> [UInt8] {
        if access(path, F_OK) != 0 && errno == ENOENT {
            var key: [UInt8]
            do { key = try SecureRandom.bytes(minimumKeySize) } catch { throw AuditError("random audit HMAC key: \(error)") }
            var text = Array((hexString(key) + "\n").utf8)
            defer {
                wipe(&key)
                wipe(&text)
            }
            do {
                try POSIXFile.atomicWrite(path: path, bytes: text, noClobber: true)
            } catch where access(path, F_OK) == 0 {
                // Another process created it first: use theirs.
            }
        }
        return try load(path: path)
    }

    /// The key in `contents` (see the formats above).
    public static func parse(_ contents: [UInt8]) throws(AuditError) -> [UInt8] {
        let text = trimmed(contents)
        if text.count >= 2 * minimumKeySize, text.count % 2 == 0, let key = LowercaseHex.decode(lowercased(text), count: text.count / 2) {
            return key
        }
        if !text.isEmpty, text.allSatisfy(isBase64Character),
           let decoded = Data(base64Encoded: Data(Array(text) + paddingFor(text.count))), decoded.count >= minimumKeySize {
            return Array(decoded)
        }
        guard !isPrintableText(contents), contents.count >= minimumKeySize else {
            throw AuditError("audit HMAC key must be hex (\(2 * minimumKeySize)+ digits) or base64 text of at least "
                + "\(minimumKeySize) bytes, or at least \(minimumKeySize) raw bytes")
        }
        return contents
    }

    private static func trimmed(_ bytes: [UInt8]) -> ArraySlice<UInt8> {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else { return [] }
        return bytes[first...last]
    }

    private static func lowercased(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        ArraySlice(bytes.map { $0 >= 0x41 && $0 <= 0x46 ? $0 + 0x20 : $0 })
    }

    private static func isBase64Character(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2B || c == 0x2F || c == 0x3D
    }

    private static func paddingFor(_ count: Int) -> [UInt8] {
        Array(repeating: 0x3D, count: (4 - count % 4) % 4)
    }
}
