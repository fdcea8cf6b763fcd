// Where audit lines go: an append-only file rotated by size, any other writable path (a character device such
// as /dev/null, a FIFO), or stdout ("-"). Used only by the writer thread.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

final class AuditSink {
    let path: String
    private let maxSize: Int64
    private let maxFiles: Int
    private(set) var fd: Int32 = -1
    /// Only regular files are rotated, identity-checked and truncated after a failed write.
    private(set) var isRegularFile = false
    /// Bytes in the current file (regular files).
    private(set) var size: Int64 = 0
    /// Set whenever a new descriptor is opened; the writer clears it after the first record (which carries
    /// prev_chain) so every file verifies on its own.
    var openedNewFile = false
    private var device: UInt64 = 0
    private var inode: UInt64 = 0

    var isStdout: Bool { path == "-" }

    init(path: String, maxSize: Int64, maxFiles: Int) {
        self.path = path
        self.maxSize = maxSize
        self.maxFiles = maxFiles
    }

    var isOpen: Bool { fd >= 0 }

    func open() throws(AuditError) {
        close()
        openedNewFile = true
        if isStdout {
            fd = 1
            isRegularFile = false
            return
        }
        // O_NONBLOCK only for the open: a FIFO without a reader fails (ENXIO) instead of hanging kekd.
        let newFD = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0o600)
        guard newFD >= 0 else { throw AuditError("cannot open audit log \(path): \(POSIXFile.errorText(errno))") }
        _ = fcntl(newFD, F_SETFL, fcntl(newFD, F_GETFL) & ~O_NONBLOCK)
        var st = stat()
        guard fstat(newFD, &st) == 0 else {
            let e = errno
            Glibc.close(newFD)
            throw AuditError("cannot stat audit log \(path): \(POSIXFile.errorText(e))")
        }
        fd = newFD
        isRegularFile = (st.st_mode & S_IFMT) == S_IFREG
        size = isRegularFile ? Int64(st.st_size) : 0
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        if isRegularFile && st.st_mode & 0o077 != 0 {
            // An audit log is not for other users; an existing file is tightened, not trusted.
            _ = fchmod(newFD, 0o600)
        }
        if isRegularFile && size > 0 && lastByte() != 0x0A {
            // A crash left a partial line: end it so our next record starts on its own line. The verifier
            // reports the partial line; the chain continues from the last complete record.
            if POSIXFile.writeAll(fd: fd, [0x0A]) == nil { size += 1 }
        }
    }

    func close() {
        if fd >= 0 && !isStdout { Glibc.close(fd) }
        fd = -1
    }

    /// False when the path no longer names our open file (removed, renamed by an external rotation, its
    /// folder gone): the writer then reopens the path, which fails when it can no longer be created.
    func pathStillNamesOpenFile() -> Bool {
        guard isRegularFile, !isStdout else { return true }
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    func write(_ bytes: [UInt8]) -> Int32? {
        guard fd >= 0 else { return EBADF }
        if let e = POSIXFile.writeAll(fd: fd, bytes) { return e }
        size += Int64(bytes.count)
        return nil
    }

    /// fdatasync; devices and pipes that cannot sync (EINVAL, EROFS, ENOTSUP) count as synced.
    func sync() -> Int32? {
        guard fd >= 0 else { return EBADF }
        if fdatasync(fd) == 0 { return nil }
        let e = errno
        if !isRegularFile && (e == EINVAL || e == EROFS || e == ENOTSUP || e == EOPNOTSUPP) { return nil }
        return e
    }

    /// After a failed write: cut a partial line off a regular file so the file stays a sequence of records.
    func truncate(to length: Int64) -> Bool {
        guard isRegularFile, fd >= 0 else { return false }
        guard ftruncate(fd, off_t(length)) == 0 else { return false }
        size = length
        return true
    }

    /// Whether appending `count` bytes after `pending` unwritten ones would take a non-empty regular file
    /// beyond maxSize.
    func needsRotation(pending: Int, adding count: Int) -> Bool {
        guard isRegularFile, !isStdout, maxSize > 0, size + Int64(pending) > 0 else { return false }
        return size + Int64(pending) + Int64(count) > maxSize
    }

    /// PATH.(maxFiles-1) → PATH.maxFiles, …, PATH → PATH.1, then a new PATH. The caller has written and synced
    /// everything for the old file.
    func rotate() throws(AuditError) {
        if fd >= 0 { _ = fdatasync(fd) }
        close()
        if maxFiles > 0 {
            var i = maxFiles - 1
            while i >= 1 {
                _ = rename("\(path).\(i)", "\(path).\(i + 1)")   // a missing PATH.i is fine
                i -= 1
            }
            guard rename(path, "\(path).1") == 0 else {
                throw AuditError("cannot rotate \(path): \(POSIXFile.errorText(errno))")
            }
        } else {
            guard unlink(path) == 0 else { throw AuditError("cannot rotate \(path): \(POSIXFile.errorText(errno))") }
        }
        POSIXFile.syncDirectory(POSIXFile.directory(of: path))
        try open()
    }

    /// The file's last byte, through a separate read-only descriptor (ours is write-only).
    private func lastByte() -> UInt8? {
        let readFD = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard readFD >= 0 else { return nil }
        defer { Glibc.close(readFD) }
        var byte: UInt8 = 0
        return pread(readFD, &byte, 1, off_t(size - 1)) == 1 ? byte : nil
    }

    /// The last complete record in a file (reading at most its last 256 KiB), so a restarted writer continues
    /// the chain, and the chain value before it when the file shows it (its prev_chain, the line before it, or
    /// genesis for seq 1), so the writer can check the record against its key. nil when no record is found.
    static func lastRecord(path: String) -> (record: ParsedAuditLine, previousChain: [UInt8]?)? {
        let readFD = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard readFD >= 0 else { return nil }
        defer { Glibc.close(readFD) }
        var st = stat()
        guard fstat(readFD, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size > 0 else { return nil }
        let size = Int64(st.st_size)
        let window = Int(min(size, 256 << 10))
        var buffer = [UInt8](repeating: 0, count: window)
        let n = buffer.withUnsafeMutableBytes { pread(readFD, $0.baseAddress, window, off_t(size - Int64(window))) }
        guard n > 0 else { return nil }
        let tail = buffer[0..<n]
        // Complete lines only: everything up to the last newline, newest first.
        guard var end = tail.lastIndex(of: 0x0A) else { return nil }
        while true {
            let start = tail[tail.startIndex..<end].lastIndex(of: 0x0A).map { $0 + 1 } ?? tail.startIndex
            if let record = AuditLineParser.parse(tail[start..<end]) {
                var previous = record.prevChain ?? (record.seq == 1 ? AuditRecordFormat.genesisChain : nil)
                if previous == nil, start > tail.startIndex {
                    let before = tail[tail.startIndex..<(start - 1)]
                    let beforeStart = before.lastIndex(of: 0x0A).map { $0 + 1 } ?? before.startIndex
                    if let line = AuditLineParser.parse(before[beforeStart...]), line.seq &+ 1 == record.seq {
                        previous = line.chain
                    }
                }
                return (record, previous)
            }
            if start == tail.startIndex { return nil }
            end = start - 1
        }
    }
}
