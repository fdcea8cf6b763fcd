// The listening unix socket: safe creation (never steals a live socket), permissions, accept, removal.
import FoundationEssentials
import Locking
import Glibc

final class UnixSocketListener: @unchecked Sendable {
    let path: String
    let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    /// Creates the parent folder, removes a stale socket file (only after proving nobody answers on it),
    /// binds with `mode`, and listens.
    static func bind(path: String, mode: mode_t, logger: Logger) throws(SystemError) -> UnixSocketListener {
        let parent = parentFolder(of: path)
        if parent != "." {
            do {
                try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o750])
            } catch {
                throw SystemError("create socket folder \(parent)", errno: EACCES)
            }
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw SystemError("\(path) exists and is not a socket; refusing to replace it", errno: EEXIST)
            }
            if let fd = try? Posix.connectUnix(path) {
                close(fd)
                throw SystemError("another process is serving on \(path)", errno: EADDRINUSE)
            }
            guard unlink(path) == 0 || errno == ENOENT else { throw SystemError("remove stale socket \(path)") }
            logger.info("removed stale socket file", ["path": path])
        }
        var addr = try Posix.makeUnixAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        // The socket file's mode comes from the umask at bind time: make it private before it exists.
        let oldMask = umask(0o177)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let bindErrno = errno
        umask(oldMask)
        guard rc == 0 else { close(fd); throw SystemError("bind \(path)", errno: bindErrno) }
        guard chmod(path, mode) == 0 else { let e = errno; close(fd); unlink(path); throw SystemError("chmod \(path)", errno: e) }
        guard listen(fd, 128) == 0 else { let e = errno; close(fd); unlink(path); throw SystemError("listen \(path)", errno: e) }
        return UnixSocketListener(path: path, fd: fd)
    }

    /// Blocks for the next connection; nil once the listener is shut down.
    func accept() -> Int32? {
        while true {
            let client = Glibc.accept(fd, nil, nil)
            if client >= 0 {
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                return client
            }
            switch errno {
            case EINTR, ECONNABORTED: continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                usleep(50_000)  // out of descriptors: back off instead of spinning
                continue
            default: return nil
            }
        }
    }

    /// Wakes a blocked accept and removes the socket file.
    func shutdownAndRemove() {
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        var st = stat()
        if lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
    }

    func closeDescriptor() { close(fd) }
}
