// Secrets come only from files, and files change (rotated secret-ids, renewed certificates): re-read on change.
// Every credential file follows the key file's rules: a regular file, not accessible by group or others, owned by
// kekd's own uid or root.
import Crypto
import FoundationEssentials
import Locking
#if canImport(Glibc)
import Glibc
#endif

/// Identity of a file's current contents, cheap to compare (no read).
struct FileStamp: Equatable, Sendable {
    var modified: Double
    var size: Int64
    var inode: UInt64

    static func of(_ path: String) -> FileStamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileStamp(st)
    }

    init(_ st: stat) {
        modified = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
        size = Int64(st.st_size)
        inode = UInt64(st.st_ino)
    }
}

enum CredentialFile {
    /// Why `st` (of the credential file `path`, described as `what`) is not private enough, or nil. The reason
    /// names the file, never its contents.
    static func problem(_ st: stat, path: String, what: String) -> String? {
        guard st.st_mode & S_IFMT == S_IFREG else { return "\(what) \(path) is not a regular file" }
        let permissions = st.st_mode & 0o777
        if permissions & 0o077 != 0 {
            let mode = String(permissions, radix: 8)
            return "\(what) \(path) has mode \(String(repeating: "0", count: max(0, 4 - mode.count)) + mode): "
                + "it must not be accessible by group or others; run `chmod 600 \(path)`"
        }
        let uid = geteuid()
        if st.st_uid != uid && st.st_uid != 0 {
            return "\(what) \(path) is owned by uid \(st.st_uid): it must be owned by kekd's uid \(uid) or root"
        }
        return nil
    }

    /// Checks the file `path` points at (following symlinks, as mounted Secrets use them).
    static func check(_ path: String, what: String) throws(VaultError) {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw VaultError(.invalidArgument, "cannot read \(what) \(path): \(String(cString: strerror(errno)))")
        }
        if let problem = problem(st, path: path, what: what) { throw VaultError(.invalidArgument, problem) }
    }
}

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
    func read() throws(VaultError) -> [UInt8] {
        // O_NONBLOCK: a FIFO in the file's place must not hang the caller.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw VaultError(.unavailable, "cannot read \(what) \(path)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw VaultError(.unavailable, "cannot read \(what) \(path)") }
        // A file that became readable by others since startup is refused like at startup: its secret may be known.
        if secret, let problem = CredentialFile.problem(st, path: path, what: what) { throw VaultError(.permissionDenied, problem) }
        let stamp = FileStamp(st)
        if let cached = cache.withLock({ $0 }), cached.stamp == stamp { return cached.value }
        guard st.st_mode & S_IFMT == S_IFREG, stamp.size <= Int64(Self.maxSize) else {
            throw VaultError(.unavailable, "cannot read \(what) \(path)")
        }
        var bytes = [UInt8](repeating: 0, count: Self.maxSize + 1)
        var length = 0
        while length < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + length, $0.count - length) }
            if n > 0 { length += n; continue }
            if n == 0 { break }
            if errno == EINTR { continue }
            wipe(&bytes)
            throw VaultError(.unavailable, "cannot read \(what) \(path)")
        }
        defer { wipe(&bytes) }
        guard length <= Self.maxSize else { throw VaultError(.unavailable, "\(what) \(path) is too large") }
        let isSpace: (UInt8) -> Bool = { $0 == 10 || $0 == 13 || $0 == 32 || $0 == 9 }
        var end = length
        while end > 0 && isSpace(bytes[end - 1]) { end -= 1 }
        var start = 0
        while start < end && isSpace(bytes[start]) { start += 1 }
        guard start < end else { throw VaultError(.unavailable, "\(what) \(path) is empty") }
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
