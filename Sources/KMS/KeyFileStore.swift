// Reading and writing key files safely: permission checks on load, an exclusive lock (flock on `PATH.lock`) around
// every read-modify-write, and atomic replacement (temp file in the same folder, fsync, rename, fsync the folder) so
// a reader, or a crash at any point, sees either the old or the new complete file.
import Crypto
import FoundationEssentials
import Locking
#if canImport(Glibc)
import Glibc
#endif

/// Identity of the file a path points at, to notice replacement (inode) and in-place edits (size, times).
public struct FileFingerprint: Sendable, Equatable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var mtime: Int64
    var mtimeNanos: Int64
    var ctime: Int64
    var ctimeNanos: Int64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        mtime = Int64(st.st_mtim.tv_sec)
        mtimeNanos = Int64(st.st_mtim.tv_nsec)
        ctime = Int64(st.st_ctim.tv_sec)
        ctimeNanos = Int64(st.st_ctim.tv_nsec)
    }
}

/// Who may own a key file its reader trusts.
public enum KeyFileOwnerRule: Sendable {
    /// kekctl: an operator (often root) manages a file owned by kekd's uid.
    case anyOwner
    /// kekd: its own effective uid, or root. Any other owner could rewrite or chmod the file under kekd.
    case processOrRoot
}

public enum KeyFileStore {
    /// A key file with 10,000 versions is about 1.2 MB; anything much larger is not a key file.
    public static let maxFileSize = 4 << 20
    /// How long a writer waits for another writer's lock before giving up.
    public static let lockTimeout: Double = 10

    /// The fingerprint of what `path` currently points at (following symlinks, as a mounted Secret uses them).
    public static func fingerprint(path: String) -> FileFingerprint? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileFingerprint(st)
    }

    /// Reads and fully validates a key file. Refuses files that are not regular, are accessible by group or others,
    /// are too large, corrupt, or break the state rules.
    public static func load(path: String, owner: KeyFileOwnerRule = .anyOwner) throws(KMSError) -> (file: KeyFile, fingerprint: FileFingerprint) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)   // O_NONBLOCK: a FIFO in its place must not hang us
        guard fd >= 0 else {
            let err = errno
            if err == ENOENT { throw KMSError(.failedPrecondition, "key file \(path) does not exist (create one with `kekctl init --key-file \(path)`)") }
            throw KMSError(.failedPrecondition, "cannot open key file \(path): \(errnoText(err))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw KMSError(.failedPrecondition, "cannot stat key file \(path): \(errnoText(errno))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw KMSError(.failedPrecondition, "key file \(path) is not a regular file") }
        if owner == .processOrRoot, st.st_uid != geteuid(), st.st_uid != 0 {
            throw KMSError(.failedPrecondition, "key file \(path) is owned by uid \(st.st_uid): it must be owned by kekd's uid "
                           + "\(geteuid()) or root; run `chown \(geteuid()) \(path)`")
        }
        let permissions = st.st_mode & 0o777
        guard permissions & 0o077 == 0 else {
            throw KMSError(.failedPrecondition, "key file \(path) has mode \(String(permissions, radix: 8, uppercase: false).leftPadded(4)): "
                           + "it must not be accessible by group or others; run `chmod 600 \(path)`")
        }
        guard st.st_size <= maxFileSize else { throw KMSError(.failedPrecondition, "key file \(path) is \(st.st_size) bytes, too large for a key file") }
        var bytes = try readAll(fd: fd, path: path)
        defer { wipe(&bytes) }
        let mtime = Date(timeIntervalSince1970: Double(st.st_mtim.tv_sec))
        do {
            return (try KeyFile.parse(bytes, legacyCreated: mtime), FileFingerprint(st))
        } catch {
            throw KMSError(error.code, "key file \(path): \(error.message)")
        }
    }

    /// Creates a new key file; refuses to overwrite anything at `path`. Missing parent folders are made with mode 0700.
    public static func create(path: String, file: KeyFile) throws(KMSError) {
        try file.validate()
        try makeParentFolders(of: path)
        try withExclusiveLock(path: path) { () throws(KMSError) in
            var st = stat()
            if lstat(path, &st) == 0 { throw KMSError(.failedPrecondition, "\(path) already exists; refusing to overwrite it") }
            try writeAtomically(file.serialized(), to: path, replace: false)
        }
    }

    /// Locked read-modify-write: loads the file, applies `change`, validates, and writes it back atomically when the
    /// content changed (a first-format file is always rewritten in the current format).
    public static func update<T>(path: String, _ change: (inout KeyFile) throws(KMSError) -> T) throws(KMSError) -> T {
        try withExclusiveLock(path: path) { () throws(KMSError) -> T in
            let original = try load(path: path).file
            var file = original
            let result = try change(&file)
            try file.validate()
            if file != original || original.isLegacyFormat {
                try writeAtomically(file.serialized(), to: path, replace: true)
            }
            return result
        }
    }

    /// Runs `body` holding an exclusive flock on `PATH.lock` (a sibling, so the lock survives the key file's
    /// replacement by rename). Waits up to `lockTimeout` seconds for another holder.
    public static func withExclusiveLock<T>(path: String, _ body: () throws(KMSError) -> T) throws(KMSError) -> T {
        let lockPath = path + ".lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw KMSError(.failedPrecondition, "cannot open lock file \(lockPath): \(errnoText(errno))") }
        defer { close(fd) }   // closing releases the lock
        // A lock file root created must stay usable by the key file's owner (kekctl run as kekd's uid). Best effort.
        var keyStat = stat(), lockStat = stat()
        if stat(path, &keyStat) == 0, fstat(fd, &lockStat) == 0, lockStat.st_uid != keyStat.st_uid || lockStat.st_gid != keyStat.st_gid {
            _ = fchown(fd, keyStat.st_uid, keyStat.st_gid)
        }
        let deadline = Date().addingTimeInterval(lockTimeout)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            guard err == EWOULDBLOCK || err == EINTR else { throw KMSError(.failedPrecondition, "cannot lock \(lockPath): \(errnoText(err))") }
            guard Date() < deadline else {
                throw KMSError(.failedPrecondition, "\(lockPath) is held by another process for more than \(Int(lockTimeout))s; try again")
            }
            usleep(20_000)
        }
        return try body()
    }

    /// Temp file in the same folder (mode 0600), write, fsync, then rename over `path` (or link, refusing an existing
    /// `path`, when `replace` is false), then fsync the folder so the new name is durable. A replacement keeps the
    /// replaced file's owner and group: kekctl run as root must not leave a root-owned file that kekd (another uid)
    /// can no longer read. When it cannot (not root, and not that owner), it refuses before writing anything.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, replace: Bool) throws(KMSError) {
        var content = bytes
        defer { wipe(&content) }
        var replaced = stat()
        let keepOwner = replace && stat(path, &replaced) == 0
        let folder = parentFolder(of: path)
        let tempPrefix = "." + Locking.lastPathComponent(of: path) + ".tmp-"
        removeStaleTempFiles(folder: folder, prefix: tempPrefix)
        let suffix = (try? SecureRandom.bytes(6)).map { hexString($0) } ?? String(getpid())
        let tempPath = folder + "/" + tempPrefix + suffix
        let fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw KMSError(.internalError, "cannot create \(tempPath): \(errnoText(errno))") }
        var renamed = false
        defer { if !renamed { unlink(tempPath) } }
        do {
            defer { close(fd) }
            if keepOwner, replaced.st_uid != geteuid() || replaced.st_gid != getegid() {
                guard fchown(fd, replaced.st_uid, replaced.st_gid) == 0 else {
                    throw KMSError(.failedPrecondition, "refusing to rewrite \(path): the new file could not keep its owner "
                                   + "\(replaced.st_uid):\(replaced.st_gid) (\(errnoText(errno))); run kekctl as that user or as root")
                }
            }
            guard fchmod(fd, 0o600) == 0 else { throw KMSError(.internalError, "chmod \(tempPath): \(errnoText(errno))") }
            try writeAll(fd: fd, content, path: tempPath)
            guard fsync(fd) == 0 else { throw KMSError(.internalError, "fsync \(tempPath): \(errnoText(errno))") }
        }
        if replace {
            guard rename(tempPath, path) == 0 else { throw KMSError(.internalError, "rename to \(path): \(errnoText(errno))") }
            renamed = true
        } else {
            guard link(tempPath, path) == 0 else {
                let err = errno
                if err == EEXIST { throw KMSError(.failedPrecondition, "\(path) already exists; refusing to overwrite it") }
                throw KMSError(.internalError, "link to \(path): \(errnoText(err))")
            }
            unlink(tempPath)
            renamed = true
        }
        try fsyncFolder(folder)
    }

    /// A writer killed between creating its temp file and renaming it leaves key material behind; the next writer,
    /// holding the lock, removes it.
    private static func removeStaleTempFiles(folder: String, prefix: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix(prefix) { unlink(folder + "/" + name) }
    }

    static func fsyncFolder(_ folder: String) throws(KMSError) {
        let fd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw KMSError(.internalError, "open folder \(folder): \(errnoText(errno))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw KMSError(.internalError, "fsync folder \(folder): \(errnoText(errno))") }
    }

    static func makeParentFolders(of path: String) throws(KMSError) {
        let folder = parentFolder(of: path)
        var info = stat()
        if stat(folder, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else { throw KMSError(.failedPrecondition, "\(folder) is not a folder") }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw KMSError(.failedPrecondition, "cannot create folder \(folder): \(error)")
        }
    }

    private static func readAll(fd: Int32, path: String) throws(KMSError) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        defer { wipe(&chunk) }
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return out }
            if n < 0 {
                if errno == EINTR { continue }
                wipe(&out)
                throw KMSError(.failedPrecondition, "cannot read key file \(path): \(errnoText(errno))")
            }
            out.append(contentsOf: chunk[0..<n])
            if out.count > maxFileSize {
                wipe(&out)
                throw KMSError(.failedPrecondition, "key file \(path) is too large for a key file")
            }
        }
    }

    private static func writeAll(fd: Int32, _ bytes: [UInt8], path: String) throws(KMSError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw KMSError(.internalError, "write \(path): \(errnoText(errno))")
            }
            offset += n
        }
    }
}

func errnoText(_ err: Int32) -> String { String(cString: strerror(err)) }

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}
