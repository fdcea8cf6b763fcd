// The health and metrics endpoint: a deliberately small HTTP/1.1 server on plain POSIX sockets.
// One request per connection (`Connection: close`), GET/HEAD only, bounded in size, time and concurrency,
// so a slow or hostile local client cannot exhaust it or delay the kubelet's probes.
import Dispatch
import FoundationEssentials
import Glibc
import Metrics
import Locking

/// One named condition of `/readyz`. `detail` is shown in the body, so it must never hold secrets.
public struct ReadinessCheck: Sendable {
    public var name: String
    public var check: @Sendable () -> (ok: Bool, detail: String)

    public init(name: String, check: @escaping @Sendable () -> (ok: Bool, detail: String)) {
        self.name = name
        self.check = check
    }
}

public enum HealthServerError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidAddress(String)
    case socketFailed(operation: String, errno: Int32)
    case alreadyStarted

    public var description: String {
        switch self {
        case .invalidAddress(let address): "health address \(address) is not HOST:PORT with an IPv4 or [IPv6] literal"
        case .socketFailed(let op, let code): "health endpoint \(op) failed: \(String(cString: strerror(code)))"
        case .alreadyStarted: "health server was already started"
        }
    }
}

/// Resource bounds of the health endpoint.
public struct HealthServerLimits: Sendable {
    /// Request line plus headers; larger requests get 431.
    public var maxHeadBytes = 8192
    /// Time allowed for the whole request head to arrive (not per read: trickling bytes does not extend it).
    public var readTimeoutSeconds = 5.0
    /// Time allowed for each blocked write of the response.
    public var writeTimeoutSeconds = 5.0
    /// Connections served at once; more are closed as soon as they are accepted.
    public var maxConnections = 16

    public init() {}
}

public final class HealthServer: Sendable {
    private let host: String
    private let requestedPort: UInt16
    private let metrics: KekdMetrics
    private let checks: [ReadinessCheck]
    private let limits: HealthServerLimits
    private let state = LockedValue(ListenerState())
    private let acceptLoop = DispatchGroup()
    private let handlers = DispatchGroup()

    private struct ListenerState {
        var listenFD: Int32 = -1
        var wakeRead: Int32 = -1
        var wakeWrite: Int32 = -1
        var port: UInt16 = 0
        var started = false
        var stopping = false
        var connections: Set<Int32> = []
    }

    public convenience init(host: String, port: UInt16, metrics: KekdMetrics, checks: [ReadinessCheck]) {
        self.init(host: host, port: port, metrics: metrics, checks: checks, limits: HealthServerLimits())
    }

    public init(host: String, port: UInt16, metrics: KekdMetrics, checks: [ReadinessCheck],
                limits: HealthServerLimits) {
        self.host = host
        self.requestedPort = port
        self.metrics = metrics
        self.checks = checks
        self.limits = limits
    }

    /// Splits a `--health-addr` value: `127.0.0.1:8787`, `[::1]:8787`, `localhost:8787`. The host must be an IP
    /// literal (or `localhost`); the port 0...65535 (0 picks a free one).
    public static func parseAddress(_ text: String) throws(HealthServerError) -> (host: String, port: UInt16) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw .invalidAddress(text)
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            throw .invalidAddress(text)   // an IPv6 literal needs brackets: [::1]:8787
        }
        _ = try HealthListenAddress(host: host, port: port)
        return (host, port)
    }

    /// The port actually bound (differs from the requested one when that was 0); 0 before `start()`.
    public var boundPort: UInt16 { state.withLock { $0.port } }

    /// Binds and listens, then serves on background threads. Throws when the address is invalid or taken.
    public func start() throws {
        let address = try HealthListenAddress(host: host, port: requestedPort)
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HealthServerError.socketFailed(operation: "socket", errno: errno) }
        var pipeFDs: [Int32] = [-1, -1]
        do {
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard address.withSockaddr({ bind(fd, $0, $1) }) == 0 else {
                throw HealthServerError.socketFailed(operation: "bind to \(host):\(requestedPort)", errno: errno)
            }
            guard listen(fd, 64) == 0 else { throw HealthServerError.socketFailed(operation: "listen", errno: errno) }
            // Non-blocking so a connection reset between poll and accept cannot block the loop.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            guard pipe(&pipeFDs) == 0 else { throw HealthServerError.socketFailed(operation: "pipe", errno: errno) }
            for p in pipeFDs { setCloseOnExec(p) }
            let port = HealthListenAddress.localPort(of: fd)
            let wakeRead = pipeFDs[0], wakeWrite = pipeFDs[1]
            try state.withLock { s in
                guard !s.started else { throw HealthServerError.alreadyStarted }
                s = ListenerState(listenFD: fd, wakeRead: wakeRead, wakeWrite: wakeWrite, port: port, started: true)
            }
        } catch {
            close(fd)
            for p in pipeFDs where p >= 0 { close(p) }
            throw error
        }
        acceptLoop.enter()
        let wakeFD = pipeFDs[0]
        startThread(name: "kekd-health", stackSize: 256 << 10) { [self] in
            runAcceptLoop(listenFD: fd, wakeFD: wakeFD)
            acceptLoop.leave()
        }
    }

    /// Closes the listener, ends open connections and waits for the serving threads. Safe to call twice.
    public func stop() {
        let fds: (listen: Int32, wakeRead: Int32, wakeWrite: Int32)? = state.withLock { s in
            guard s.started, !s.stopping else { return nil }
            s.stopping = true
            for connection in s.connections { shutdown(connection, Int32(SHUT_RDWR)) }
            return (s.listenFD, s.wakeRead, s.wakeWrite)
        }
        guard let fds else { return }
        var byte: UInt8 = 1
        _ = write(fds.wakeWrite, &byte, 1)
        acceptLoop.wait()
        // Handlers end on their own timeouts at the latest; the sockets were shut down above, so this is quick.
        _ = handlers.wait(timeout: .now() + limits.readTimeoutSeconds + limits.writeTimeoutSeconds + 1)
        close(fds.listen)
        close(fds.wakeRead)
        close(fds.wakeWrite)
    }

    // MARK: accepting

    private func runAcceptLoop(listenFD: Int32, wakeFD: Int32) {
        var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            let ready = poll(&fds, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            // (accept4 is not visible from Swift's Glibc module; kekd does not fork, so the gap is harmless.)
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                // Out of descriptors or memory: back off instead of spinning on a listener that stays readable.
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM { usleep(50_000) }
                continue
            }
            setCloseOnExec(client)
            admit(client)
        }
    }

    private func admit(_ client: Int32) {
        let admitted = state.withLock { s in
            guard !s.stopping, s.connections.count < limits.maxConnections else { return false }
            s.connections.insert(client)
            return true
        }
        guard admitted else {
            close(client)
            return
        }
        handlers.enter()
        startThread(name: "kekd-health-conn", stackSize: 512 << 10) { [self] in
            serve(client)
            // Removed under the lock before closing, so stop() never shuts down a reused descriptor number.
            state.withLock { _ = $0.connections.remove(client) }
            close(client)
            handlers.leave()
        }
    }

    // MARK: serving one connection

    private func serve(_ fd: Int32) {
        var timeout = timeval(seconds: limits.writeTimeoutSeconds)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let response: HealthResponse
        switch readHead(fd) {
        case .head(let bytes):
            switch HealthRequest.parse(bytes) {
            case .success(let request): response = respond(to: request)
            case .failure(let error): response = .text(400, "bad request: \(error.reason)\n")
            }
        case .tooLarge: response = .text(431, "request head larger than \(limits.maxHeadBytes) bytes\n")
        case .timedOut: response = .text(408, "request head not received within the time limit\n")
        case .closed: return
        }
        writeAll(fd, response.serialized())
        // Half-close, then read what the client may still send, so closing does not reset the connection and
        // discard the response before the client has read it.
        shutdown(fd, Int32(SHUT_WR))
        drain(fd, deadline: monotonicSeconds() + 0.2, budget: 64 << 10)
    }

    private enum HeadResult {
        case head([UInt8]), tooLarge, timedOut, closed
    }

    private func readHead(_ fd: Int32) -> HeadResult {
        let deadline = monotonicSeconds() + limits.readTimeoutSeconds
        var buffer = [UInt8](repeating: 0, count: limits.maxHeadBytes)
        var filled = 0
        while true {
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0, waitReadable(fd, seconds: remaining) else { return .timedOut }
            let n = buffer.withUnsafeMutableBytes { raw in
                recv(fd, raw.baseAddress! + filled, raw.count - filled, 0)
            }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return .closed
            }
            if n == 0 { return .closed }
            let scanFrom = max(0, filled - 3)
            filled += n
            if let end = HealthRequest.endOfHead(buffer[..<filled], from: scanFrom) {
                return .head(Array(buffer[..<end]))
            }
            if filled == buffer.count { return .tooLarge }
        }
    }

    private func respond(to request: HealthRequest) -> HealthResponse {
        guard request.method == "GET" || request.method == "HEAD" else {
            var response = HealthResponse.text(405, "method \(request.method) not allowed\n")
            response.extraHeaders = "Allow: GET, HEAD\r\n"
            return response
        }
        var response: HealthResponse
        let path = request.path
        if path == "/livez" {
            response = .text(200, "ok\n")
        } else if path == "/metrics" {
            response = HealthResponse(status: 200, contentType: prometheusTextContentType,
                                      body: Array(metrics.render().utf8))
        } else if let endpoint = ["/readyz", "/healthz"].first(where: { path == $0 || path.hasPrefix($0 + "/") }) {
            let single = path == endpoint ? nil : String(path.dropFirst(endpoint.count + 1))
            response = readiness(endpoint: String(endpoint.dropFirst()), single: single, request: request)
        } else {
            response = .text(404, "not found: the health endpoint serves /livez, /readyz, /healthz and /metrics\n")
        }
        response.headOnly = request.method == "HEAD"
        return response
    }

    /// kube-apiserver's format: `[+]name ok` / `[-]name failed: detail` per check, then a summary line.
    private func readiness(endpoint: String, single: String?, request: HealthRequest) -> HealthResponse {
        var selected = checks
        if let single {
            selected = checks.filter { $0.name == single }
            guard !selected.isEmpty else { return .text(404, "no readiness check named \(single)\n") }
        }
        let excluded = Set(request.queryValues("exclude"))
        let verbose = request.hasQueryKey("verbose")
        var body = ""
        var failed = false
        for check in selected {
            if excluded.contains(check.name) {
                body += "[+]\(check.name) excluded: ok\n"
                continue
            }
            let result = check.check()
            let detail = Self.oneLine(result.detail)
            if result.ok {
                body += verbose && !detail.isEmpty ? "[+]\(check.name) ok: \(detail)\n" : "[+]\(check.name) ok\n"
            } else {
                failed = true
                body += detail.isEmpty ? "[-]\(check.name) failed\n" : "[-]\(check.name) failed: \(detail)\n"
            }
        }
        body += failed ? "\(endpoint) check failed\n" : "\(endpoint) check passed\n"
        return .text(failed ? 503 : 200, body)
    }

    private static func oneLine(_ text: String) -> String {
        String(text.map { $0.isNewline ? " " : $0 }.prefix(512))
    }

    // MARK: socket helpers

    private func waitReadable(_ fd: Int32, seconds: Double) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let millis = Int32(min(max(seconds * 1000, 1), Double(Int32.max)))
        while true {
            let ready = poll(&pfd, 1, millis)
            if ready < 0 && errno == EINTR { continue }
            return ready > 0
        }
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return   // peer gone, or SO_SNDTIMEO expired
            }
            offset += n
        }
    }

    private func drain(_ fd: Int32, deadline: Double, budget: Int) {
        var scratch = [UInt8](repeating: 0, count: 4096)
        var left = budget
        while left > 0 {
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0, waitReadable(fd, seconds: remaining) else { return }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            left -= n
        }
    }
}

private func setCloseOnExec(_ fd: Int32) {
    _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC)
}

private func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

fileprivate extension timeval {
    init(seconds: Double) {
        let whole = Int(seconds)
        self.init(tv_sec: whole, tv_usec: Int((seconds - Double(whole)) * 1e6))
    }
}

// MARK: - Request and response

/// A parsed request head. Only what the health endpoint needs: method, path, query.
struct HealthRequest: Equatable {
    var method: String
    var path: String
    var query: String

    struct ParseError: Error, Equatable {
        var reason: String
    }

    /// The index just past the blank line ending the head (`\r\n\r\n`, or a bare `\n\n`), scanning from `from`.
    static func endOfHead(_ bytes: ArraySlice<UInt8>, from: Int) -> Int? {
        var i = max(bytes.startIndex, from)
        while i < bytes.endIndex {
            if bytes[i] == 10 {
                if i + 1 < bytes.endIndex, bytes[i + 1] == 10 { return i + 2 }
                if i + 2 < bytes.endIndex, bytes[i + 1] == 13, bytes[i + 2] == 10 { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    /// Parses a complete head (request line and header lines). Strict: anything odd is a 400.
    static func parse(_ head: [UInt8]) -> Result<HealthRequest, ParseError> {
        // Bytes outside visible ASCII, space, tab, CR and LF never belong in a request head we serve.
        if head.contains(where: { ($0 < 0x20 && $0 != 9 && $0 != 10 && $0 != 13) || $0 == 0x7f }) {
            return .failure(ParseError(reason: "control characters in the request head"))
        }
        // Split on bytes: as Characters, "\r\n" is one grapheme and would not split on "\n".
        var lines = head.split(separator: 10, omittingEmptySubsequences: false).map { line in
            String(decoding: line.last == 13 ? line.dropLast() : line, as: UTF8.self)[...]
        }
        while let first = lines.first, first.isEmpty { lines.removeFirst() }   // RFC 9112 §2.2: leading CRLFs
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        guard let requestLine = lines.first else { return .failure(ParseError(reason: "empty request")) }
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .failure(ParseError(reason: "malformed request line")) }
        let method = String(parts[0]), target = parts[1], version = parts[2]
        guard !method.isEmpty, method.utf8.allSatisfy(isTokenByte) else {
            return .failure(ParseError(reason: "malformed method"))
        }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            return .failure(ParseError(reason: "unsupported HTTP version"))
        }
        guard target.first == "/", target.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            return .failure(ParseError(reason: "request target must be an absolute path"))
        }
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                  line[..<colon].utf8.allSatisfy(isTokenByte) else {
                return .failure(ParseError(reason: "malformed header line"))
            }
        }
        let pathAndQuery = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        return .success(HealthRequest(method: method, path: String(pathAndQuery[0]),
                                      query: pathAndQuery.count > 1 ? String(pathAndQuery[1]) : ""))
    }

    /// RFC 9110 token characters (method and header names).
    private static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    private var queryItems: [(key: Substring, value: Substring)] {
        query.split(separator: "&").map { item in
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (pair[0], pair.count > 1 ? pair[1] : "")
        }
    }

    func hasQueryKey(_ key: String) -> Bool { queryItems.contains { $0.key == key } }

    func queryValues(_ key: String) -> [String] {
        queryItems.filter { $0.key == key }.map { String($0.value) }
    }
}

struct HealthResponse {
    var status: Int
    var contentType: String
    var body: [UInt8]
    var extraHeaders = ""
    var headOnly = false

    static func text(_ status: Int, _ body: String) -> HealthResponse {
        HealthResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array(body.utf8))
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 431: "Request Header Fields Too Large"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }

    func serialized() -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\n"
        head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        head += "Cache-Control: no-cache, private\r\nX-Content-Type-Options: nosniff\r\n"
        head += extraHeaders
        head += "Connection: close\r\n\r\n"
        return Array(head.utf8) + (headOnly ? [] : body)
    }
}

// MARK: - Addresses

/// An IPv4 or IPv6 literal with a port, ready for bind(2).
struct HealthListenAddress {
    private var storage = sockaddr_storage()
    private(set) var family: Int32
    private var length: socklen_t

    init(host: String, port: UInt16) throws(HealthServerError) {
        var literal = host
        if literal.hasPrefix("["), literal.hasSuffix("]") { literal = String(literal.dropFirst().dropLast()) }
        if literal == "localhost" { literal = "127.0.0.1" }
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET, literal, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
            family = AF_INET
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: v4) { dst.copyMemory(from: $0) } }
        } else if inet_pton(AF_INET6, literal, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
            family = AF_INET6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: v6) { dst.copyMemory(from: $0) } }
        } else {
            throw .invalidAddress(host)
        }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    static func localPort(of fd: Int32) -> UInt16 {
        var bound = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &bound) { ptr in
            ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &size) == 0 }
        }
        guard ok else { return 0 }
        return withUnsafeBytes(of: bound) { raw in
            // sin_port and sin6_port share the offset right after the family.
            UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self))
        }
    }
}
