// The listening unix socket: safe creation (never steals a live socket), permissions, accept, removal.
import FoundationEssentials
import Glibc
import Locking
import Logging
import Transport

final class UnixSocketListener: @unchecked Sendable {
    let path: String
    let fd: Int32
    /// The file bind(2) created (st_dev, st_ino): shutdown removes the path only while it is still that file.
    private let boundFile: (device: UInt64, inode: UInt64)?

    private init(path: String, fd: Int32, boundFile: (device: UInt64, inode: UInt64)?) {
        self.path = path
        self.fd = fd
        self.boundFile = boundFile
    }

    /// What an existing socket file at the listen path means, from the outcome of connecting to it.
    enum ExistingSocket: Equatable {
        /// Something accepted or queued the connection (or the backlog is full): a live server.
        case live
        /// ECONNREFUSED: the file is bound by nobody, so it is safe to remove.
        case stale
        /// Any other error (EACCES, ELOOP, ...) proves nothing: a live socket may be behind it.
        case undetermined(errno: Int32)

        /// `connectErrno` is nil when connect(2) succeeded.
        static func classify(connectErrno: Int32?) -> ExistingSocket {
            guard let code = connectErrno else { return .live }
            switch code {
            case ECONNREFUSED: return .stale
            // Non-blocking connect to a listener whose backlog is full.
            case EAGAIN, EINPROGRESS: return .live
            default: return .undetermined(errno: code)
            }
        }
    }

    /// Connects without blocking (a live listener with a full backlog must not hang kekd's start).
    static func probe(_ path: String) -> ExistingSocket {
        guard var addr = try? Posix.makeUnixAddress(path) else { return .undetermined(errno: ENAMETOOLONG) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .undetermined(errno: errno) }
        defer { close(fd) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return ExistingSocket.classify(connectErrno: rc == 0 ? nil : errno)
    }

    /// Creates the parent folder, removes a stale socket file (only when connecting to it is refused),
    /// binds with `mode`, and listens.
    /// `afterBindForTesting` runs right after bind(2), where a test plays the local attacker who swaps the path.
    static func bind(path: String, mode: mode_t, logger: Logger,
                     afterBindForTesting: (() -> Void)? = nil) throws(SystemError) -> UnixSocketListener {
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
            switch probe(path) {
            case .live:
                throw SystemError("another process is serving on \(path)", errno: EADDRINUSE)
            case .undetermined(let code):
                // SystemError appends the reason, e.g. "...; refusing to remove it: connect: Permission denied".
                throw SystemError("cannot tell whether \(path) is in use, refusing to remove it: connect", errno: code)
            case .stale:
                guard unlink(path) == 0 || errno == ENOENT else { throw SystemError("remove stale socket \(path)") }
                logger.info("removed stale socket file", ["path": path])
            }
        }
        var addr = try Posix.makeUnixAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        // The socket file is born with `mode` through the umask: no chmod by path afterwards, which would follow
        // a symlink put at the path in between. (Other threads create files with explicit private modes only.)
        let oldMask = umask(~mode & 0o777)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let bindErrno = errno
        umask(oldMask)
        guard rc == 0 else { close(fd); throw SystemError("bind \(path)", errno: bindErrno) }
        afterBindForTesting?()
        var bound = stat()
        let boundFile = lstat(path, &bound) == 0 && (bound.st_mode & S_IFMT) == S_IFSOCK
            ? (device: UInt64(bound.st_dev), inode: UInt64(bound.st_ino)) : nil
        let listener = UnixSocketListener(path: path, fd: fd, boundFile: boundFile)
        guard listen(fd, 128) == 0 else {
            let e = errno
            listener.removeSocketFile()
            close(fd)
            throw SystemError("listen \(path)", errno: e)
        }
        return listener
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
        removeSocketFile()
    }

    /// Unlinks the path only while it is still the socket file kekd bound: a socket or file someone put there
    /// since (another kekd, an operator's replacement) is left alone.
    private func removeSocketFile() {
        guard let boundFile else { return }
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK,
              UInt64(st.st_dev) == boundFile.device, UInt64(st.st_ino) == boundFile.inode else { return }
        unlink(path)
    }

    func closeDescriptor() { close(fd) }
}
