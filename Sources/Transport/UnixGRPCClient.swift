// A blocking gRPC client over a unix socket, built on the project's own HTTP/2 layer. kekctl uses it to probe a
// running kekd; the benchmark uses its pipelined mode to keep many calls in flight on one connection.
import FoundationEssentials
import Glibc
import GRPC

public struct ClientError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public final class UnixGRPCClient {
    private let fd: Int32
    private let connection = GRPCClientConnection()
    private let ioTimeoutMillis: Int32
    private var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    private var pollFDs: [pollfd]
    /// A wait for kekd's answer polls before it sleeps (see `SpinBeforeSleep`).
    private var spin = SpinBeforeSleep()

    public init(socketPath: String, ioTimeoutSeconds: Double = 5) throws {
        do { fd = try Posix.connectUnix(socketPath) } catch { throw ClientError("cannot connect to \(socketPath): \(error)") }
        pollFDs = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        Posix.setTimeout(fd, option: SO_SNDTIMEO, seconds: ioTimeoutSeconds)
        // Whole milliseconds for poll, at least one (0 would not wait at all).
        ioTimeoutMillis = Int32(clamping: max(1, Int64((min(ioTimeoutSeconds, 1e6) * 1000).rounded(.up))))
    }

    deinit { close(fd) }

    /// One unary call.
    public func call(path: String, message: [UInt8], timeoutNanos: UInt64? = 3_000_000_000) throws -> GRPCResponse {
        guard let stream = connection.startCall(path: path, message: message, timeoutNanos: timeoutNanos) else {
            throw ClientError("connection cannot open a new stream")
        }
        while true {
            try flush()
            for event in try readEvents() {
                switch event {
                case let .response(id, response) where id == stream: return response
                case .response: continue
                case let .connectionError(reason): throw ClientError("connection error: \(reason)")
                }
            }
        }
    }

    /// Runs `total` calls keeping `concurrency` in flight; `onComplete` gets each response and its latency in ns.
    public func runPipelined(total: Int, concurrency: Int, path: String, message: () -> [UInt8],
                             onComplete: (GRPCResponse, UInt64) -> Void) throws {
        var started = 0, finished = 0
        var startTimes: [UInt32: UInt64] = [:]
        while finished < total {
            while started < total, startTimes.count < concurrency {
                guard let id = connection.startCall(path: path, message: message(), timeoutNanos: 3_000_000_000) else {
                    throw ClientError("connection cannot open a new stream")
                }
                startTimes[id] = Posix.monotonicNanos()
                started += 1
            }
            try flush()
            for event in try readEvents() {
                switch event {
                case let .response(id, response):
                    guard let t0 = startTimes.removeValue(forKey: id) else { continue }
                    finished += 1
                    onComplete(response, Posix.monotonicNanos() - t0)
                case let .connectionError(reason):
                    throw ClientError("connection error: \(reason)")
                }
            }
        }
    }

    private func flush() throws {
        while connection.http2.hasOutput {
            guard Posix.writeAll(fd, connection.http2.takeOutput()) else { throw ClientError("write failed: \(SystemError("send"))") }
        }
    }

    private func readEvents() throws -> [GRPCClientEvent] {
        // Wait in poll, not in a blocking read: a reader blocked in read(2) on a unix stream socket is also woken
        // when kekd consumes our request (the kernel signals write space on the same wait queue), a wasted wake-up
        // and context switch per call; poll's waiter asks for POLLIN only and sleeps through it.
        var ready: Int32
        repeat {
            pollFDs[0].revents = 0
            ready = spin.poll(&pollFDs, timeoutMillis: ioTimeoutMillis)
        } while ready < 0 && errno == EINTR
        guard ready > 0 else { throw ClientError(ready == 0 ? "timed out waiting for kekd" : "poll failed: \(SystemError("poll"))") }
        var n: Int
        repeat {
            n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        } while n < 0 && errno == EINTR
        guard n > 0 else {
            throw ClientError(n == 0 ? "kekd closed the connection" : "read failed: \(SystemError("read"))")
        }
        let events = connection.receive(buffer[0..<n])
        try flush()  // acks and window updates
        return events
    }
}
