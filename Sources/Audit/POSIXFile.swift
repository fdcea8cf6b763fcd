// Small POSIX helpers: whole-buffer writes, atomic replacement, reading a file, errno text.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

enum POSIXFile {
    static func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// Writes every byte (retrying short writes and EINTR); returns errno on failure.
    static func writeAll(fd: Int32, _ bytes: [UInt8]) -> Int32? {
        bytes.withUnsafeBytes { raw -> Int32? in
            guard let base = raw.baseAddress else { return nil }
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                if n == 0 { return EIO }
                offset += n
            }
            return nil
        }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = String(path[..<slash])
        return dir.isEmpty ? "/" : dir
    }

    /// fsync of a folder, so a rename or create in it is durable. Returns errno on failure.
    @discardableResult
    static func syncDirectory(_ dir: String) -> Int32? {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        return fsync(fd) == 0 ? nil : errno
    }

    /// Replaces `path` atomically: temp file in the same folder (mode `mode`), fsync, rename, fsync the folder.
    /// With `noClobber`, an existing `path` is left alone and the call throws (link(2) instead of rename(2)).
    static func atomicWrite(path: String, bytes: [UInt8], mode: mode_t = 0o600, noClobber: Bool = false) throws(AuditError) {
        let dir = directory(of: path)
        let temp = path + ".tmp.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw AuditError("cannot create \(temp): \(errorText(errno))") }
        var failure: String? = nil
        if fchmod(fd, mode) != 0 { failure = "fchmod: \(errorText(errno))" }
        if failure == nil, let e = writeAll(fd: fd, bytes) { failure = "write: \(errorText(e))" }
        if failure == nil, fsync(fd) != 0 { failure = "fsync: \(errorText(errno))" }
        close(fd)
        if failure == nil {
            if noClobber {
                if link(temp, path) != 0 { failure = errno == EEXIST ? "it already exists" : "link: \(errorText(errno))" }
                unlink(temp)
            } else if rename(temp, path) != 0 {
                failure = "rename: \(errorText(errno))"
            }
        }
        if let failure {
            unlink(temp)
            throw AuditError("cannot write \(path): \(failure)")
        }
        if let e = syncDirectory(dir) { throw AuditError("cannot fsync \(dir): \(errorText(e))") }
    }

    /// The end of the file from a line start on, holding at least `lines` newline-terminated lines (or the whole
    /// file), and how many lines come before it: memory grows with `lines`, not with the file.
    static func readTail(path: String, lines: Int) throws(AuditError) -> (bytes: [UInt8], linesBefore: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AuditError("cannot open \(path): \(errorText(errno))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw AuditError("cannot stat \(path): \(errorText(errno))") }
        let size = Int(st.st_size)
        func readAt(_ offset: Int, _ count: Int) throws(AuditError) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
                if n < 0, errno == EINTR { continue }
                if n < 0 { throw AuditError("cannot read \(path): \(errorText(errno))") }
                if n == 0 { break }
                done += n
            }
            return Array(out[0..<done])
        }
        var window = min(size, max(lines, 1) * 1024)
        while true {
            let offset = size - window
            var bytes = try readAt(offset, window)
            var start = 0
            if offset > 0, let newline = bytes.firstIndex(of: 0x0A) { start = newline + 1 } else if offset > 0 { start = bytes.count }
            if offset == 0 || bytes[start...].lazy.filter({ $0 == 0x0A }).count >= lines {
                bytes.removeFirst(start)
                var before = 0
                var position = 0
                while position < offset + start {
                    let chunk = try readAt(position, min(1 << 16, offset + start - position))
                    if chunk.isEmpty { break }
                    before += chunk.lazy.filter { $0 == 0x0A }.count
                    position += chunk.count
                }
                return (bytes, before)
            }
            window = min(size, window * 2)
        }
    }

    /// The whole file, or an error naming the path.
    static func read(path: String, limit: Int = Int.max) throws(AuditError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AuditError("cannot open \(path): \(errorText(errno))") }
        defer { close(fd) }
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AuditError("cannot read \(path): \(errorText(errno))")
            }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
            if out.count > limit { throw AuditError("\(path) is larger than \(limit) bytes") }
        }
    }
}
