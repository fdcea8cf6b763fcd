// Secrets come only from files, and files change (rotated secret-ids, renewed certificates): re-read on change.
// Every credential file follows the key file's rules (HTTPClient's `CredentialFile`).
import Crypto
import FoundationEssentials
import KMS
import Locking
#if canImport(Glibc)
import Glibc
#endif

/// A small secret (token, role-id, secret-id) read from a file, re-read when the file changes.
final class SecretFile: Sendable {
    let path: String
    /// "Vault token file", "AppRole secret-id file": how messages name the file.
    let what: String
    /// Whether the file must be private (the token and the secret-id; a role-id is an identifier, not a secret).
    let secret: Bool
    private let cache = LockedValue<(stamp: FileStamp, value: [UInt8])?>(nil)
    static let maxSize = 64 * 1024

    init(path: String, what: String = "secret file", secret: Bool = true) {
        self.path = path; self.what = what; self.secret = secret
    }

    /// The trimmed contents. Throws a message that names the file but never its contents.
    func read() throws(KMSError) -> [UInt8] {
        // O_NONBLOCK: a FIFO in the file's place must not hang the caller.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw KMSError(.unavailable, "cannot read \(what) \(path)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw KMSError(.unavailable, "cannot read \(what) \(path)") }
        // A file that became readable by others since startup is refused like at startup: its secret may be known.
        if secret, let problem = CredentialFile.problem(st, path: path, what: what) { throw KMSError(.permissionDenied, problem) }
        let stamp = FileStamp(st)
        if let cached = cache.withLock({ $0 }), cached.stamp == stamp { return cached.value }
        guard st.st_mode & S_IFMT == S_IFREG, stamp.size <= Int64(Self.maxSize) else {
            throw KMSError(.unavailable, "cannot read \(what) \(path)")
        }
        var bytes = [UInt8](repeating: 0, count: Self.maxSize + 1)
        var length = 0
        while length < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + length, $0.count - length) }
            if n > 0 { length += n; continue }
            if n == 0 { break }
            if errno == EINTR { continue }
            wipe(&bytes)
            throw KMSError(.unavailable, "cannot read \(what) \(path)")
        }
        defer { wipe(&bytes) }
        guard length <= Self.maxSize else { throw KMSError(.unavailable, "\(what) \(path) is too large") }
        let isSpace: (UInt8) -> Bool = { $0 == 10 || $0 == 13 || $0 == 32 || $0 == 9 }
        var end = length
        while end > 0 && isSpace(bytes[end - 1]) { end -= 1 }
        var start = 0
        while start < end && isSpace(bytes[start]) { start += 1 }
        guard start < end else { throw KMSError(.unavailable, "\(what) \(path) is empty") }
        let value = Array(bytes[start..<end])
        cache.withLock { $0 = (stamp, value) }
        return value
    }

    /// True if the file differs from what was last read.
    func changed() -> Bool {
        let stamp = FileStamp.of(path)
        return cache.withLock { $0?.stamp } != stamp
    }
}
