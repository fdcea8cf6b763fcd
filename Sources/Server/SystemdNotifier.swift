// sd_notify(3) without libsystemd: one datagram per state change to the unix socket named by $NOTIFY_SOCKET.
// Used with `Type=notify` (READY=1 once the KMS socket accepts, STOPPING=1 on shutdown) and `WatchdogSec=`
// (WATCHDOG=1 at half of $WATCHDOG_USEC while the server is alive).
import Dispatch
import FoundationEssentials
import Glibc
import Locking
import Transport

public final class SystemdNotifier: Sendable {
    /// The address bytes as given to sendto(2): a filesystem path, or an abstract name ('@' → leading NUL).
    let address: sockaddr_un
    let addressLength: socklen_t
    private let stopped = LockedValue(false)
    private let watchdogDone = DispatchSemaphore(value: 0)
    private let watchdogRunning = LockedValue(false)

    /// nil when $NOTIFY_SOCKET is unset or empty (not started by systemd with Type=notify).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(SystemError) -> SystemdNotifier? {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        return try SystemdNotifier(socketPath: path)
    }

    public init(socketPath: String) throws(SystemError) {
        (address, addressLength) = try Self.makeAddress(socketPath)
    }

    /// `/path` or `@abstract-name`. Abstract names are not NUL-terminated: their length is exactly the bytes given.
    static func makeAddress(_ name: String) throws(SystemError) -> (sockaddr_un, socklen_t) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        guard abstract || bytes.first == UInt8(ascii: "/") else {
            throw SystemError("NOTIFY_SOCKET must be an absolute path or start with @", errno: EINVAL)
        }
        if abstract { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        // A path needs room for its terminating NUL; an abstract name may use every byte.
        guard bytes.count < capacity || (abstract && bytes.count == capacity), bytes.count > 1 else {
            throw SystemError("NOTIFY_SOCKET name has a bad length", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path) ?? 2
        let length = abstract ? pathOffset + bytes.count : pathOffset + bytes.count + 1
        return (addr, socklen_t(length))
    }

    /// Sends one notification (e.g. "READY=1"). False when it could not be delivered; systemd then acts on its
    /// own timeouts, so callers only log.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = address
        let payload = Array(state.utf8)
        let sent = withUnsafePointer(to: &addr) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, addressLength) }
            }
        }
        return sent == payload.count
    }

    /// The watchdog interval in seconds from $WATCHDOG_USEC, if it is meant for this process ($WATCHDOG_PID
    /// unset or equal to our pid).
    public static func watchdogInterval(_ environment: [String: String] = ProcessInfo.processInfo.environment,
                                        pid: Int32 = getpid()) -> Double? {
        guard let text = environment["WATCHDOG_USEC"], let usec = UInt64(text), usec > 0 else { return nil }
        if let owner = environment["WATCHDOG_PID"], Int32(owner) != pid { return nil }
        return Double(usec) / 1_000_000
    }

    /// Sends WATCHDOG=1 every `interval / 2` seconds while `isAlive()` holds, from its own thread. A kekd whose
    /// server stopped listening stays silent, and systemd restarts it when the interval runs out.
    public func startWatchdog(interval: Double, isAlive: @escaping @Sendable () -> Bool) {
        watchdogRunning.withLock { $0 = true }
        let period = max(interval / 2, 0.01)
        startThread(name: "kekd-watchdog", stackSize: 256 << 10) { [self] in
            while !stopped.withLock({ $0 }) {
                if isAlive() { notify("WATCHDOG=1") }
                var remaining = period
                while remaining > 0 && !stopped.withLock({ $0 }) {
                    let step = min(remaining, 0.1)
                    usleep(UInt32(step * 1_000_000))
                    remaining -= step
                }
            }
            watchdogDone.signal()
        }
    }

    /// Stops the watchdog thread (if any) and sends STOPPING=1.
    public func stopping() {
        stopped.withLock { $0 = true }
        let wasRunning = watchdogRunning.withLock { running in
            defer { running = false }
            return running
        }
        if wasRunning { watchdogDone.wait() }
        notify("STOPPING=1")
    }
}
