// The health and metrics endpoint: a deliberately small HTTP/1.1 server on plain POSIX sockets.
// One request per connection (`Connection: close`), GET/HEAD only, bounded in size, time and connections.
// One thread serves everything with poll(2) over the listener and every client, each with its own buffer and
// deadline, so a local process holding many half-sent requests cannot starve the kubelet's probes: at the cap the
// oldest connection still sending its request is closed to make room, never the new one refused.
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import Metrics
import Locking

/// One named condition of `/readyz`. The endpoint shows only the name and ok/failed (any local user can read it);
/// `detail` goes to kekd's log when a check fails.
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
    /// Time allowed for the whole request head to arrive, from accept (trickling bytes does not extend it).
    public var readTimeoutSeconds = 5.0
    /// Time allowed for sending the whole response.
    public var writeTimeoutSeconds = 5.0
    /// Connections held at once. At the cap a new connection is still admitted: the oldest one still sending its
    /// request (else the oldest) is closed for it, so whoever fills the cap only loses their own connections.
    public var maxConnections = 64
    /// A failed bind (with `start(retryingBind: true)`) is retried after this long, doubling up to the maximum.
    public var bindRetrySeconds = 1.0
    public var maxBindRetrySeconds = 8.0

    public init() {}
}

public final class HealthServer: Sendable {
    private let host: String
    private let requestedPort: UInt16
    private let metrics: KekdMetrics
    private let checks: [ReadinessCheck]
    private let limits: HealthServerLimits
    private let logger: Logger?
    private let state = LockedValue(ControlState())
    /// Failing checks' last logged detail, so a failing probe every few seconds logs a change once.
    private let loggedFailures = LockedValue<[String: String]>([:])
    private let loopFinished = DispatchGroup()

    private struct ControlState {
        var wakeRead: Int32 = -1
        var wakeWrite: Int32 = -1
        var port: UInt16 = 0
        var started = false
        var stopping = false
    }

    public convenience init(host: String, port: UInt16, metrics: KekdMetrics, checks: [ReadinessCheck]) {
        self.init(host: host, port: port, metrics: metrics, checks: checks, limits: HealthServerLimits())
    }

    public init(host: String, port: UInt16, metrics: KekdMetrics, checks: [ReadinessCheck],
                limits: HealthServerLimits, logger: Logger? = nil) {
        self.host = host
        self.requestedPort = port
        self.metrics = metrics
        self.checks = checks
        self.limits = limits
        self.logger = logger
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

    /// The port actually bound (differs from the requested one when that was 0); 0 while not listening.
    public var boundPort: UInt16 { state.withLock { $0.port } }

    /// Binds and listens, then serves on a background thread. Throws when the address is invalid; a failed bind
    /// (the port taken) throws too, unless `retryingBind`: then it is logged, counted and retried in the
    /// background with backoff until it succeeds, so the KMS socket never waits for the health port.
    public func start(retryingBind: Bool = false) throws {
        let address = try HealthListenAddress(host: host, port: requestedPort)
        var listenFD: Int32 = -1
        switch Self.listen(on: address, description: "\(host):\(requestedPort)") {
        case .success(let fd): listenFD = fd
        case .failure(let error):
            guard retryingBind else { throw error }
            reportBindFailure(error, retryInSeconds: limits.bindRetrySeconds)
        }
        var pipeFDs: [Int32] = [-1, -1]
        do {
            guard pipe(&pipeFDs) == 0 else { throw HealthServerError.socketFailed(operation: "pipe", errno: errno) }
            for p in pipeFDs { setCloseOnExec(p) }
            let port = listenFD >= 0 ? HealthListenAddress.localPort(of: listenFD) : 0
            let wakeRead = pipeFDs[0], wakeWrite = pipeFDs[1]
            try state.withLock { s in
                guard !s.started else { throw HealthServerError.alreadyStarted }
                s = ControlState(wakeRead: wakeRead, wakeWrite: wakeWrite, port: port, started: true)
            }
        } catch {
            if listenFD >= 0 { close(listenFD) }
            for p in pipeFDs where p >= 0 { close(p) }
            throw error
        }
        if listenFD >= 0 { metrics.setHealthListening(true) }
        loopFinished.enter()
        let wakeFD = pipeFDs[0], initialListenFD = listenFD
        startThread(name: "kekd-health", stackSize: 512 << 10) { [self] in
            var loop = EventLoop(listenFD: initialListenFD, wakeFD: wakeFD, limits: limits)
            loop.run(self)
            loopFinished.leave()
        }
    }

    /// Closes the listener and every connection and waits for the serving thread. Safe to call twice.
    public func stop() {
        let fds: (wakeRead: Int32, wakeWrite: Int32)? = state.withLock { s in
            guard s.started, !s.stopping else { return nil }
            s.stopping = true
            return (s.wakeRead, s.wakeWrite)
        }
        guard let fds else { return }
        var byte: UInt8 = 1
        _ = write(fds.wakeWrite, &byte, 1)
        loopFinished.wait()
        close(fds.wakeRead)
        close(fds.wakeWrite)
        state.withLock { $0.port = 0 }
        metrics.setHealthListening(false)
    }

    // MARK: binding

    private static func listen(on address: HealthListenAddress, description: String) -> Result<Int32, HealthServerError> {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(.socketFailed(operation: "socket", errno: errno)) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard address.withSockaddr({ bind(fd, $0, $1) }) == 0 else {
            let code = errno
            close(fd)
            return .failure(.socketFailed(operation: "bind to \(description)", errno: code))
        }
        guard Glibc.listen(fd, 128) == 0 else {
            let code = errno
            close(fd)
            return .failure(.socketFailed(operation: "listen", errno: code))
        }
        // Non-blocking so a connection reset between poll and accept cannot block the loop.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return .success(fd)
    }

    private func reportBindFailure(_ error: HealthServerError, retryInSeconds: Double) {
        metrics.healthBindFailed()
        logger?.warn("health endpoint cannot listen; KMS socket unaffected, retrying",
                     ["address": "\(host):\(requestedPort)", "error": error.description, "retry_seconds": retryInSeconds])
    }

    /// One bind attempt from the serving thread; the listener's fd on success.
    fileprivate func retryBind(nextRetrySeconds: Double) -> Int32? {
        guard let address = try? HealthListenAddress(host: host, port: requestedPort) else { return nil }
        switch Self.listen(on: address, description: "\(host):\(requestedPort)") {
        case .success(let fd):
            let port = HealthListenAddress.localPort(of: fd)
            state.withLock { $0.port = port }
            metrics.setHealthListening(true)
            logger?.info("health endpoint listening", ["address": "\(host):\(port)"])
            return fd
        case .failure(let error):
            reportBindFailure(error, retryInSeconds: nextRetrySeconds)
            return nil
        }
    }

    fileprivate func evicted() { metrics.healthConnectionEvicted() }

    // MARK: answering

    fileprivate func response(forHead head: [UInt8]) -> HealthResponse {
        switch HealthRequest.parse(head) {
        case .success(let request): respond(to: request)
        case .failure(let error): .text(400, "bad request: \(error.reason)\n")
        }
    }

    fileprivate func response(for failure: EventLoop.HeadFailure) -> HealthResponse {
        switch failure {
        case .tooLarge: .text(431, "request head larger than \(limits.maxHeadBytes) bytes\n")
        case .timedOut: .text(408, "request head not received within the time limit\n")
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

    /// kube-apiserver's format: `[+]name ok` / `[-]name failed` per check, then a summary line. Names and states
    /// only, `?verbose` or not: details (paths, addresses, errors) go to the log, which only the operator reads.
    private func readiness(endpoint: String, single: String?, request: HealthRequest) -> HealthResponse {
        var selected = checks
        if let single {
            selected = checks.filter { $0.name == single }
            guard !selected.isEmpty else { return .text(404, "no readiness check named \(single)\n") }
        }
        let excluded = Set(request.queryValues("exclude"))
        var body = ""
        var failed = false
        for check in selected {
            if excluded.contains(check.name) {
                body += "[+]\(check.name) excluded: ok\n"
                continue
            }
            let result = check.check()
            logFailureChange(check: check.name, ok: result.ok, detail: Self.oneLine(result.detail))
            if result.ok {
                body += "[+]\(check.name) ok\n"
            } else {
                failed = true
                body += "[-]\(check.name) failed\n"
            }
        }
        body += failed ? "\(endpoint) check failed\n" : "\(endpoint) check passed\n"
        return .text(failed ? 503 : 200, body)
    }

    private func logFailureChange(check name: String, ok: Bool, detail: String) {
        let changed = loggedFailures.withLock { logged in
            let previous = logged[name]
            if ok { logged[name] = nil } else { logged[name] = detail }
            return ok ? previous != nil : previous != detail
        }
        guard changed else { return }
        if ok {
            logger?.info("readiness check passes again", ["check": name])
        } else {
            logger?.warn("readiness check failed", ["check": name, "detail": detail])
        }
    }

    private static func oneLine(_ text: String) -> String {
        String(text.map { $0.isNewline ? " " : $0 }.prefix(512))
    }
}

// MARK: - The serving loop

/// Owned by the health thread alone: the listener (once bound), the clients and their buffers.
private struct EventLoop {
    enum HeadFailure { case tooLarge, timedOut }

    private struct Connection {
        enum Phase { case readingHead, writing, draining, done }
        let fd: Int32
        var phase = Phase.readingHead
        var deadline: Double
        var head: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        var drainBudget = 64 << 10
    }

    private var listenFD: Int32
    private let wakeFD: Int32
    private let limits: HealthServerLimits
    /// In accept order: the front is the oldest.
    private var connections: [Connection] = []
    private var nextBindAttempt: Double
    private var bindRetryDelay: Double
    private var scratch = [UInt8](repeating: 0, count: 16 << 10)

    init(listenFD: Int32, wakeFD: Int32, limits: HealthServerLimits) {
        self.listenFD = listenFD
        self.wakeFD = wakeFD
        self.limits = limits
        bindRetryDelay = limits.bindRetrySeconds
        nextBindAttempt = listenFD >= 0 ? .infinity : monotonicSeconds() + limits.bindRetrySeconds
    }

    mutating func run(_ server: HealthServer) {
        var pollFDs: [pollfd] = []
        while true {
            pollFDs.removeAll(keepingCapacity: true)
            pollFDs.append(pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0))
            pollFDs.append(pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0))   // fd -1 is ignored by poll
            for c in connections {
                pollFDs.append(pollfd(fd: c.fd, events: Int16(c.phase == .writing ? POLLOUT : POLLIN), revents: 0))
            }
            var wakeAt = nextBindAttempt
            for c in connections { wakeAt = min(wakeAt, c.deadline) }
            let timeout = wakeAt.isInfinite ? -1 : Int32(min(max((wakeAt - monotonicSeconds()) * 1000, 0).rounded(.up), 60_000))
            let ready = poll(&pollFDs, nfds_t(pollFDs.count), timeout)
            if ready < 0 {
                if errno != EINTR { usleep(10_000) }   // ENOMEM: try again shortly rather than spin
                continue
            }
            if pollFDs[0].revents != 0 { break }
            let now = monotonicSeconds()
            // Requests already in progress first, then new connections.
            for i in connections.indices {
                var c = connections[i]
                connections[i].head = []   // keep `c` the only owner of its buffer (no copy on append)
                let events = pollFDs[2 + i].revents
                if events != 0 { advance(&c, events: events, now: now, server) }
                if c.phase != .done, now >= c.deadline { expire(&c, now: now, server) }
                connections[i] = c
            }
            connections.removeAll { $0.phase == .done }
            if listenFD >= 0, pollFDs[1].revents != 0 { acceptPending(now: now, server) }
            if listenFD < 0, now >= nextBindAttempt {
                bindRetryDelay = min(bindRetryDelay * 2, limits.maxBindRetrySeconds)
                if let fd = server.retryBind(nextRetrySeconds: bindRetryDelay) {
                    listenFD = fd
                    nextBindAttempt = .infinity
                } else {
                    nextBindAttempt = now + bindRetryDelay
                }
            }
        }
        for c in connections { close(c.fd) }
        if listenFD >= 0 { close(listenFD) }
    }

    private mutating func acceptPending(now: Double, _ server: HealthServer) {
        // A bounded batch per turn, so a connect flood cannot keep the loop from serving the admitted ones.
        for _ in 0..<64 {
            // (accept4 is not visible from Swift's Glibc module; kekd does not fork, so the gap is harmless.)
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                // Out of descriptors or memory: let a turn pass instead of spinning on a readable listener.
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM { usleep(10_000) }
                return
            }
            setCloseOnExec(client)
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
            if connections.count >= limits.maxConnections { evictOne(server) }
            connections.append(Connection(fd: client, deadline: now + limits.readTimeoutSeconds))
        }
    }

    /// Makes room at the cap: the oldest connection still sending its request, else the oldest of all.
    private mutating func evictOne(_ server: HealthServer) {
        let victim = connections.firstIndex { $0.phase == .readingHead } ?? connections.startIndex
        close(connections[victim].fd)
        connections.remove(at: victim)
        server.evicted()
    }

    private mutating func advance(_ c: inout Connection, events: Int16, now: Double, _ server: HealthServer) {
        switch c.phase {
        case .readingHead:
            let room = limits.maxHeadBytes - c.head.count
            let n = scratch.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, min(room, $0.count), Int32(MSG_DONTWAIT)) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
            guard n > 0 else { return finish(&c) }
            let scanFrom = max(0, c.head.count - 3)
            c.head += scratch[..<n]
            if let end = HealthRequest.endOfHead(c.head[...], from: scanFrom) {
                startWriting(&c, server.response(forHead: Array(c.head[..<end])), now: now)
            } else if c.head.count >= limits.maxHeadBytes {
                startWriting(&c, server.response(for: .tooLarge), now: now)
            }
        case .writing:
            flush(&c, now: now)
        case .draining:
            // Read what the client may still send, so closing does not reset the connection and discard the
            // response before the client has read it.
            let n = scratch.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
            c.drainBudget -= max(n, 0)
            if n <= 0 || c.drainBudget <= 0 { finish(&c) }
        case .done:
            return
        }
    }

    private func expire(_ c: inout Connection, now: Double, _ server: HealthServer) {
        if c.phase == .readingHead && !c.head.isEmpty {
            startWriting(&c, server.response(for: .timedOut), now: now)
            if c.phase == .writing { finish(&c) }   // no time left to wait for a slow reader
        } else {
            finish(&c)
        }
    }

    private func startWriting(_ c: inout Connection, _ response: HealthResponse, now: Double) {
        c.head = []
        c.output = response.serialized()
        c.written = 0
        c.phase = .writing
        c.deadline = now + limits.writeTimeoutSeconds
        flush(&c, now: now)
    }

    private func flush(_ c: inout Connection, now: Double) {
        while c.written < c.output.count {
            let n = c.output.withUnsafeBytes { raw in
                send(c.fd, raw.baseAddress! + c.written, raw.count - c.written, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { return }   // wait for POLLOUT
                return finish(&c)
            }
            c.written += n
        }
        shutdown(c.fd, Int32(SHUT_WR))
        c.output = []
        c.phase = .draining
        c.deadline = now + 0.2
    }

    private func finish(_ c: inout Connection) {
        close(c.fd)
        c.phase = .done
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
