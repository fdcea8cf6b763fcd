import Foundation
import Glibc
import Logging
import Testing
@testable import Server
import Transport

/// Security review items 8 and 14: when an existing socket file may be removed, and what bind and shutdown touch.
@Suite struct UnixSocketListenerTests {
    static func temporaryFolder() throws -> String {
        let path = NSTemporaryDirectory() + "kekd-listener-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func onlyARefusedConnectionMakesASocketStale() {
        #expect(UnixSocketListener.ExistingSocket.classify(connectErrno: nil) == .live)
        #expect(UnixSocketListener.ExistingSocket.classify(connectErrno: ECONNREFUSED) == .stale)
        #expect(UnixSocketListener.ExistingSocket.classify(connectErrno: EAGAIN) == .live)
        for code in [EACCES, EPERM, ELOOP, ENOTDIR, ETIMEDOUT, EINTR] {
            #expect(UnixSocketListener.ExistingSocket.classify(connectErrno: code) == .undetermined(errno: code))
        }
    }

    @Test func socketIsBornWithItsModeAndTheUmaskIsRestored() throws {
        let folder = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let before = umask(0o022)
        defer { umask(before) }
        let listener = try UnixSocketListener.bind(path: "\(folder)/s.sock", mode: 0o660, logger: Logger(minimumLevel: .error))
        defer { listener.closeDescriptor() }
        var st = stat()
        #expect(lstat("\(folder)/s.sock", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(umask(0o022) == 0o022)
        listener.shutdownAndRemove()
        #expect(lstat("\(folder)/s.sock", &st) != 0)
    }

    @Test func aSymlinkSwappedInAfterBindIsNotFollowed() throws {
        let folder = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let target = "\(folder)/precious"
        #expect(FileManager.default.createFile(atPath: target, contents: Data("x".utf8), attributes: [.posixPermissions: 0o600]))
        let path = "\(folder)/s.sock"
        let listener = try UnixSocketListener.bind(path: path, mode: 0o666, logger: Logger(minimumLevel: .error)) {
            unlink(path)
            symlink(target, path)
        }
        defer { listener.closeDescriptor() }
        var st = stat()
        #expect(stat(target, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600, "the socket mode was applied through the symlink")
        listener.shutdownAndRemove()
        #expect(lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK, "shutdown removed what it did not create")
    }

    @Test func aLiveSocketIsLeftAloneWhenItsOwnerCannotBeProbed() throws {
        // A listener whose backlog is full makes a non-blocking connect fail with EAGAIN: live, not stale, and
        // kekd neither waits on it nor removes it.
        let folder = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = "\(folder)/busy.sock"
        let busy = try UnixSocketListener.bind(path: path, mode: 0o600, logger: Logger(minimumLevel: .error))
        defer { busy.closeDescriptor() }
        _ = listen(busy.fd, 0)
        var queued: [Int32] = []
        defer { queued.forEach { close($0) } }
        while queued.count < 64 {
            var addr = try Posix.makeUnixAddress(path)
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc != 0 { close(fd); break }
            queued.append(fd)
        }
        #expect(UnixSocketListener.probe(path) == .live)
        #expect(throws: SystemError.self) {
            _ = try UnixSocketListener.bind(path: path, mode: 0o600, logger: Logger(minimumLevel: .error))
        }
        var st = stat()
        #expect(lstat(path, &st) == 0)
    }
}
