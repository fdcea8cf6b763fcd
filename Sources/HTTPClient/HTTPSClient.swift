// HTTP/1.1 over TLS with keep-alive and a small pool of idle connections. One attempt per `send`; retries, backoff
// and circuit breaking belong to the caller (Vault's `VaultHTTP`, the Kubernetes and etcd clients), which knows
// which statuses are worth retrying.
import Crypto
import FoundationEssentials
import Glibc
import Locking
import Synchronization

public struct HTTPRequest: Sendable {
    public var method: String
    /// Absolute path with query, e.g. "/v1/transit/keys/k".
    public var path: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    public init(method: String, path: String, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.method = method; self.path = path; self.headers = headers; self.body = body
    }
}

/// A server address the caller's user gave that is not scheme://host[:port]; the message names it.
public struct AddressError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Where the client connects: parsed from `https://host:port` (or `http://` in explicit insecure test mode).
public struct Endpoint: Sendable, Equatable {
    public var secure: Bool
    public var host: String
    public var port: UInt16

    /// Parses scheme://host[:port][/]; IPv6 literals in brackets. No user-info, path, query or fragment.
    /// `what` names the address in messages ("Vault address", "etcd endpoint").
    public init(url: String, what: String = "address") throws(AddressError) {
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") { secure = true; rest = url.dropFirst(8) }
        else if lower.hasPrefix("http://") { secure = false; rest = url.dropFirst(7) }
        else { throw AddressError("\(what) must start with https:// (got \(url))") }
        var hostPort = rest
        if hostPort.hasSuffix("/") { hostPort = hostPort.dropLast() }
        guard !hostPort.isEmpty, !hostPort.contains("/"), !hostPort.contains("@"), !hostPort.contains("?"), !hostPort.contains("#") else {
            throw AddressError("\(what) must be scheme://host[:port] (got \(url))")
        }
        var portText: Substring? = nil
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw AddressError("bad IPv6 address in \(url)") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw AddressError("bad address \(url)") }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = String(hostPort)
        }
        guard !host.isEmpty else { throw AddressError("\(what) has no host (\(url))") }
        if let portText {
            guard let p = HTTPResponseParser.parseDecimal(String(portText)), p > 0, p <= 65535 else {
                throw AddressError("bad port in \(what) \(url)")
            }
            port = UInt16(p)
        } else {
            port = secure ? 443 : 80
        }
    }

    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return (port == (secure ? 443 : 80)) ? h : "\(h):\(port)"
    }
}

public final class HTTPSClient: Sendable {
    public let endpoint: Endpoint
    public let connectTimeout: Double
    private let tlsSettings: TLSSettings
    private let maxIdle: Int
    private let limits: HTTPParserLimits
    /// Wire bytes one response may take: the header and body limits plus room for chunk framing. Beyond it the server
    /// is broken or hostile (an endless body of chunk extensions or 100 Continues would otherwise never end).
    private let maxResponseBytes: Int
    private let idle = LockedValue<[TLSConnection]>([])
    private let context = LockedValue<(stamps: [FileStamp?], ctx: TLSContext)?>(nil)
    /// Connections opened so far (for tests and metrics: proves reuse).
    private let opened = Atomic<Int>(0)

    /// `limits` bound each response (Vault's default: 1 MiB bodies; a client reading pages of objects raises it).
    public init(endpoint: Endpoint, tls: TLSSettings, connectTimeout: Double = 1.0, maxIdle: Int = 8,
                limits: HTTPParserLimits = .init()) throws(TransportError) {
        self.endpoint = endpoint
        self.tlsSettings = tls
        self.limits = limits
        self.maxResponseBytes = limits.maxHeaderBytes + limits.maxBodyBytes + 64 * 1024
        self.connectTimeout = connectTimeout
        self.maxIdle = maxIdle
        // OpenSSL writes with write(2): a peer that closed would otherwise kill the process with SIGPIPE.
        // kekd is a server and ignores SIGPIPE anyway; doing it here makes the client safe on its own.
        _ = signal(SIGPIPE, SIG_IGN)
        if endpoint.secure { _ = try currentContext() }  // fail early on a bad CA file or client key
    }

    public var connectionsOpened: Int { opened.load(ordering: .relaxed) }

    /// Drops idle connections and forces the TLS context to be rebuilt from its files on next use.
    public func reset() {
        idle.withLock { $0.removeAll() }
        context.withLock { $0 = nil }
    }

    /// The TLS context, rebuilt when the CA, client certificate or key file changed on disk.
    private func currentContext() throws(TransportError) -> TLSContext {
        let stamps = [tlsSettings.caFile, tlsSettings.clientCertFile, tlsSettings.clientKeyFile].map { $0.flatMap(FileStamp.of) }
        if let current = context.withLock({ $0 }), current.stamps == stamps { return current.ctx }
        let ctx = try TLSContext(settings: tlsSettings)
        let replaced = context.withLock { c -> Bool in
            let had = c != nil
            c = (stamps, ctx)
            return had
        }
        if replaced { idle.withLock { $0.removeAll() } }  // old connections hold the old client certificate
        return ctx
    }

    private func checkout(deadline: Date) throws(TransportError) -> (TLSConnection, reused: Bool) {
        while let conn = idle.withLock({ $0.popLast() }) {
            if !conn.looksStale() { return (conn, true) }
        }
        let connectDeadline = min(deadline, Date(timeIntervalSinceNow: connectTimeout))
        let conn: TLSConnection
        if endpoint.secure {
            conn = try TLSConnection.open(host: endpoint.host, port: endpoint.port, context: try currentContext(), connectDeadline: connectDeadline)
        } else {
            conn = try TLSConnection.openPlain(host: endpoint.host, port: endpoint.port, connectDeadline: connectDeadline)
        }
        opened.add(1, ordering: .relaxed)
        return (conn, false)
    }

    private func checkin(_ conn: TLSConnection) {
        guard !conn.isBroken else { return }
        idle.withLock { pool in
            if pool.count < maxIdle { pool.append(conn) }
        }
    }

    /// One request/response exchange. A reused keep-alive connection that turns out closed before any response
    /// byte arrived is replaced by a fresh one once (the request never reached the server in that case).
    public func send(_ request: HTTPRequest, deadline: Date) throws(TransportError) -> HTTPResponse {
        // Requests and replies can carry key material (a local KEK to wrap, unwrapped KEKs): wipe our copies.
        var bytes = serialize(request)
        defer { wipe(&bytes) }
        var allowStaleRetry = true
        while true {
            let (conn, reused) = try checkout(deadline: deadline)
            let response: HTTPResponse
            do {
                try conn.write(bytes, deadline: deadline)
                response = try readResponse(conn, isHEAD: request.method == "HEAD", deadline: deadline)
            } catch let error where reused && allowStaleRetry && error.isStaleConnectionSign {
                allowStaleRetry = false
                continue
            }
            if response.keepAlive { checkin(conn) }
            return response
        }
    }

    /// A response read in more than this many pieces must average `minAverageReadBytes` per read: a server that
    /// sends one byte per TLS record makes every read cheap for it and costly for us.
    static let freeReads = 4096
    static let minAverageReadBytes = 64

    private func readResponse(_ conn: TLSConnection, isHEAD: Bool, deadline: Date) throws(TransportError) -> HTTPResponse {
        var buffer: [UInt8] = []
        var progress = HTTPParseProgress()
        defer { wipe(&buffer); progress.wipeBody() }
        var atEOF = false
        var reads = 0
        while true {
            let outcome: HTTPParseOutcome
            do {
                // Resumes where the previous call stopped: each byte is parsed once, however the server splits them.
                outcome = try HTTPResponseParser.parse(buffer[...], atEOF: atEOF, requestWasHEAD: isHEAD, limits: limits, progress: &progress)
            } catch {
                conn.markBroken()
                throw .protocolError(error.description)
            }
            switch outcome {
            case .complete(let response, let consumed):
                if consumed < buffer.count { conn.markBroken() }  // bytes we did not ask for: do not reuse
                return response
            case .needMore:
                do {
                    // read() checks the deadline on every call, also when data keeps arriving.
                    buffer += try conn.read(deadline: deadline)
                } catch .closed {
                    if buffer.isEmpty { throw .closed }  // nothing arrived: the request may be replayed
                    atEOF = true
                }
                reads += 1
                if buffer.count > maxResponseBytes {
                    conn.markBroken()
                    throw .protocolError("\(Self.tooLargeSign) \(maxResponseBytes) bytes")
                }
                if reads > Self.freeReads && buffer.count < reads * Self.minAverageReadBytes {
                    conn.markBroken()
                    throw .protocolError("response arrives in too many tiny pieces (\(reads) reads, \(buffer.count) bytes)")
                }
            }
        }
    }

    private func serialize(_ request: HTTPRequest) -> [UInt8] {
        var head = "\(request.method) \(request.path) HTTP/1.1\r\nHost: \(endpoint.hostHeader)\r\n"
        for (name, value) in request.headers { head += "\(name): \(value)\r\n" }
        if !request.body.isEmpty || request.method == "POST" || request.method == "PUT" {
            head += "Content-Length: \(request.body.count)\r\n"
        }
        head += "\r\n"
        return Array(head.utf8) + request.body
    }
}

extension HTTPSClient {
    /// How the "response too large" protocol errors start, so callers can tell them apart (and ask for less).
    static let tooLargeSign = "response larger than"
}

extension TransportError {
    /// The response exceeded the client's byte limits: asking for a smaller page may succeed.
    public var isResponseTooLarge: Bool {
        guard case .protocolError(let message) = self else { return false }
        return message.hasPrefix(HTTPSClient.tooLargeSign) || message == HTTPParseError.bodyTooLarge.description
    }

    /// What a keep-alive connection the server already closed looks like on the next request.
    public var isStaleConnectionSign: Bool {
        switch self {
        case .closed, .connect: return true
        default: return false
        }
    }
}
