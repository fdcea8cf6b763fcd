import Foundation
import Glibc
import Locking
import Testing
@testable import Server
import Transport

/// A datagram socket standing in for systemd's notify socket: bound to `address`, read with a timeout.
private final class DatagramReceiver {
    let fd: Int32

    init(address: (sockaddr_un, socklen_t)) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var (addr, length) = address
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard rc == 0 else { close(fd); throw SystemError("bind") }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func next() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n < 0 ? nil : String(decoding: buffer[..<n], as: UTF8.self)
    }
}

@Suite struct SystemdNotifierTests {
    static func temporarySocketPath() -> String {
        "/tmp/kekd-notify-\(getpid())-\(UUID().uuidString.prefix(8)).sock"
    }

    @Test func pathAddressIsNulTerminatedAndSized() throws {
        let (addr, length) = try SystemdNotifier.makeAddress("/run/systemd/notify")
        #expect(addr.sun_family == sa_family_t(AF_UNIX))
        #expect(Int(length) == 2 + "/run/systemd/notify".utf8.count + 1)
        let bytes = withUnsafeBytes(of: addr.sun_path) { Array($0.prefix(20)) }
        #expect(bytes == Array("/run/systemd/notify".utf8) + [0])
    }

    @Test func abstractAddressStartsWithNulAndHasNoTerminator() throws {
        let (addr, length) = try SystemdNotifier.makeAddress("@kekd/notify")
        #expect(Int(length) == 2 + "@kekd/notify".utf8.count)
        let bytes = withUnsafeBytes(of: addr.sun_path) { Array($0.prefix(12)) }
        #expect(bytes == [0] + Array("kekd/notify".utf8))
    }

    @Test func badNamesAreRefused() throws {
        for bad in ["relative/path", "@", "/" + String(repeating: "x", count: 200), ""] {
            #expect(throws: SystemError.self, "\(bad.prefix(20))") { try SystemdNotifier.makeAddress(bad) }
        }
        #expect(throws: SystemError.self) { try SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": "notify"]) }
        #expect(try SystemdNotifier.fromEnvironment([:]) == nil)
        #expect(try SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": ""]) == nil)
    }

    @Test func datagramsReachAPathSocket() throws {
        let path = Self.temporarySocketPath()
        defer { unlink(path) }
        let receiver = try DatagramReceiver(address: try SystemdNotifier.makeAddress(path))
        let notifier = try #require(try SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": path]))
        #expect(notifier.notify("READY=1"))
        #expect(receiver.next() == "READY=1")
        notifier.stopping()
        #expect(receiver.next() == "STOPPING=1")
    }

    @Test func datagramsReachAnAbstractSocket() throws {
        let name = "@kekd-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        let receiver = try DatagramReceiver(address: try SystemdNotifier.makeAddress(name))
        let notifier = try SystemdNotifier(socketPath: name)
        #expect(notifier.notify("READY=1"))
        #expect(receiver.next() == "READY=1")
    }

    @Test func sendingToNobodyFailsQuietly() throws {
        #expect(try SystemdNotifier(socketPath: Self.temporarySocketPath()).notify("READY=1") == false)
    }

    @Test func watchdogIntervalIsForThisProcessOnly() {
        #expect(SystemdNotifier.watchdogInterval(["WATCHDOG_USEC": "2000000"]) == 2)
        #expect(SystemdNotifier.watchdogInterval(["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "\(getpid())"]) == 2)
        #expect(SystemdNotifier.watchdogInterval(["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"]) == nil)
        #expect(SystemdNotifier.watchdogInterval(["WATCHDOG_USEC": "0"]) == nil)
        #expect(SystemdNotifier.watchdogInterval(["WATCHDOG_USEC": "soon"]) == nil)
        #expect(SystemdNotifier.watchdogInterval([:]) == nil)
    }

    @Test func watchdogPingsOnlyWhileAlive() throws {
        let path = Self.temporarySocketPath()
        defer { unlink(path) }
        let receiver = try DatagramReceiver(address: try SystemdNotifier.makeAddress(path))
        let notifier = try SystemdNotifier(socketPath: path)
        let alive = LockedValue(true)
        notifier.startWatchdog(interval: 0.2) { alive.withLock { $0 } }
        #expect(receiver.next() == "WATCHDOG=1")
        #expect(receiver.next() == "WATCHDOG=1")
        alive.withLock { $0 = false }
        Thread.sleep(forTimeInterval: 0.25)   // let a ping already under way arrive, then drain
        var tv = timeval(tv_sec: 0, tv_usec: 10_000)
        setsockopt(receiver.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while receiver.next() != nil {}
        tv = timeval(tv_sec: 0, tv_usec: 400_000)
        setsockopt(receiver.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(receiver.next() == nil, "a dead server must not be reported alive")
        notifier.stopping()
        #expect(receiver.next() == "STOPPING=1")
        notifier.stopping()   // a second call neither hangs nor waits for the finished thread
        #expect(receiver.next() == "STOPPING=1")
    }
}
