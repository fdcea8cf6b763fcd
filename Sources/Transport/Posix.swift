// Small POSIX helpers for unix sockets: kekd's serving edge and kekctl's client share them.
import FoundationEssentials
import Glibc
import Locking
// Transport hands out the peer's credentials (`PeerCredentials.of(socket:)`): its users see the type without a
// second import.
@_exported import PeerIdentity

public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public init(_ call: String, errno: Int32 = Glibc.errno) { self.call = call; self.errno = errno }
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

extension PeerCredentials {
    /// The process connected to unix socket `fd` (SO_PEERCRED); nil when the kernel will not say.
    public static func of(socket fd: Int32) -> PeerCredentials? {
        // struct ucred {pid_t pid; uid_t uid; gid_t gid;} — Glibc hides it behind _GNU_SOURCE, so mirror it here.
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        let soPeerCred: Int32 = 17  // SO_PEERCRED on Linux
        guard getsockopt(fd, SOL_SOCKET, soPeerCred, &cred, &len) == 0, len == 12 else { return nil }
        return PeerCredentials(pid: cred.0, uid: cred.1, gid: cred.2)
    }
}

public enum Posix {
    /// Writes everything or fails (EAGAIN after SO_SNDTIMEO counts as failure: the peer stopped reading).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        return bytes.withUnsafeBytes { buf in
            while offset < buf.count {
                let n = send(fd, buf.baseAddress! + offset, buf.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return true
        }
    }

    public static func setTimeout(_ fd: Int32, option: Int32, seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        _ = setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public static func makeUnixAddress(_ path: String) throws(SystemError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { throw SystemError("socket path longer than \(capacity - 1) bytes", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return addr
    }

    public static func connectUnix(_ path: String) throws(SystemError) -> Int32 {
        var addr = try makeUnixAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw SystemError("connect \(path)", errno: e)
        }
        return fd
    }

    public static func monotonicNanos() -> UInt64 { Locking.monotonicNanos() }
}
