// Credential files (client keys, tokens, secret-ids) follow the key file's rules: a regular file, not accessible by
// group or others, owned by the process's own uid or root. Files change (renewed certificates): `FileStamp` tells
// when to re-read.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// Identity of a file's current contents, cheap to compare (no read).
public struct FileStamp: Equatable, Sendable {
    public var modified: Double
    public var size: Int64
    public var inode: UInt64

    public static func of(_ path: String) -> FileStamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileStamp(st)
    }

    public init(_ st: stat) {
        modified = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
        size = Int64(st.st_size)
        inode = UInt64(st.st_ino)
    }
}

public enum CredentialFile {
    /// Why `st` (of the credential file `path`, described as `what`) is not private enough, or nil. The reason
    /// names the file, never its contents.
    public static func problem(_ st: stat, path: String, what: String) -> String? {
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

    /// Why the file `path` points at (following symlinks, as mounted Secrets use them) cannot serve as a credential
    /// file, or nil when it can.
    public static func checkProblem(_ path: String, what: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return "cannot read \(what) \(path): \(String(cString: strerror(errno)))" }
        return problem(st, path: path, what: what)
    }
}
