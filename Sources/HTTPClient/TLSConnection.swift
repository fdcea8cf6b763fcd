// TLS over a non-blocking TCP socket with OpenSSL libssl. Every operation takes an absolute deadline, so nothing
// here can hang: connect, handshake, read and write all wait in poll() bounded by the caller's remaining time.
import COpenSSL
import Dispatch
import FoundationEssentials
import Locking
#if canImport(Glibc)
import Glibc
#endif

/// What went wrong on the wire. Never carries secrets.
public enum TransportError: Error, Equatable, Sendable, CustomStringConvertible {
    case resolve(String)
    case connect(String)
    case timeout(String)
    case tls(String)
    case certificateVerification(String)
    case closed
    case protocolError(String)

    public var description: String {
        switch self {
        case .resolve(let m): return "cannot resolve \(m)"
        case .connect(let m): return "connect failed: \(m)"
        case .timeout(let m): return "timed out: \(m)"
        case .tls(let m): return "TLS error: \(m)"
        case .certificateVerification(let m): return "certificate verification failed: \(m)"
        case .closed: return "connection closed by peer"
        case .protocolError(let m): return "bad HTTP response: \(m)"
        }
    }
}

/// TLS settings for the client context.
public struct TLSSettings: Sendable, Equatable {
    public var caFile: String?
    public var clientCertFile: String?
    public var clientKeyFile: String?
    /// Overrides the name used for SNI and certificate host-name verification.
    public var serverName: String?
    /// Tests only: skips certificate verification entirely.
    public var insecureSkipVerify = false
    public init(caFile: String? = nil, clientCertFile: String? = nil, clientKeyFile: String? = nil, serverName: String? = nil) {
        self.caFile = caFile; self.clientCertFile = clientCertFile; self.clientKeyFile = clientKeyFile; self.serverName = serverName
    }
}

/// The most recent OpenSSL error as text (error strings hold no key material).
public func openSSLErrorText(_ fallback: String) -> String {
    var text = ""
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buf, buf.count)
        text = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return text.isEmpty ? fallback : "\(fallback): \(text)"
}

/// An SSL_CTX; thread-safe for creating connections. Rebuilt by the owner when the CA or client-cert files change.
final class TLSContext: @unchecked Sendable {
    // Immutable after init; SSL_CTX is safe to share for SSL_new across threads.
    let ctx: OpaquePointer
    let settings: TLSSettings

    init(settings: TLSSettings) throws(TransportError) {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw .tls(openSSLErrorText("SSL_CTX_new")) }
        do {
            try Self.configure(ctx, settings)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
        self.ctx = ctx
        self.settings = settings
    }

    private static func configure(_ ctx: OpaquePointer, _ settings: TLSSettings) throws(TransportError) {
        _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_2_VERSION), nil)
        _ = SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, Int(SSL_MODE_AUTO_RETRY), nil)
        if settings.insecureSkipVerify {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            if let ca = settings.caFile {
                guard SSL_CTX_load_verify_locations(ctx, ca, nil) == 1 else { throw .tls(openSSLErrorText("cannot load CA file \(ca)")) }
            } else if SSL_CTX_set_default_verify_paths(ctx) != 1 {
                throw .tls(openSSLErrorText("cannot load system CA store"))
            }
        }
        if let cert = settings.clientCertFile {
            let key = settings.clientKeyFile ?? cert
            // Checked on every rebuild too: a key file that became readable by others is refused, as at startup.
            if let problem = CredentialFile.checkProblem(key, what: "client key file") { throw .tls(problem) }
            guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
                throw .tls(openSSLErrorText("cannot load client certificate \(cert)"))
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                throw .tls(openSSLErrorText("cannot load client key \(key) or it does not match the certificate"))
            }
        }
    }

    deinit { SSL_CTX_free(ctx) }
}

/// One TLS connection (or plain TCP when `ssl` is nil: the explicit insecure test mode for http:// addresses).
/// Not thread-safe: used by one request at a time (the pool hands it out exclusively).
final class TLSConnection: @unchecked Sendable {
    private var fd: Int32
    private let ssl: OpaquePointer?
    private(set) var isBroken = false
    let createdAt = Date()

    private init(fd: Int32, ssl: OpaquePointer?) { self.fd = fd; self.ssl = ssl }

    deinit {
        if let ssl {
            if !isBroken { _ = SSL_shutdown(ssl) }  // best-effort close_notify; non-blocking, so it never waits
            SSL_free(ssl)
        }
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Plain TCP, for http:// addresses allowed only by the explicit insecure test flag.
    static func openPlain(host: String, port: UInt16, connectDeadline: Date) throws(TransportError) -> TLSConnection {
        TLSConnection(fd: try connectTCP(host: host, port: port, deadline: connectDeadline), ssl: nil)
    }

    func markBroken() { isBroken = true }

    /// Connects to host:port and completes the TLS handshake with certificate and host-name verification.
    static func open(host: String, port: UInt16, context: TLSContext, connectDeadline: Date) throws(TransportError) -> TLSConnection {
        let fd = try connectTCP(host: host, port: port, deadline: connectDeadline)
        guard let ssl = SSL_new(context.ctx) else { Glibc.close(fd); throw .tls(openSSLErrorText("SSL_new")) }
        let conn = TLSConnection(fd: fd, ssl: ssl)
        guard SSL_set_fd(ssl, fd) == 1 else { conn.isBroken = true; throw .tls(openSSLErrorText("SSL_set_fd")) }
        let name = context.settings.serverName ?? host
        if !context.settings.insecureSkipVerify {
            if isIPAddress(name) {
                guard let param = SSL_get0_param(ssl), X509_VERIFY_PARAM_set1_ip_asc(param, name) == 1 else {
                    conn.isBroken = true; throw .tls("cannot set IP for verification")
                }
            } else {
                guard SSL_set1_host(ssl, name) == 1 else { conn.isBroken = true; throw .tls("cannot set host name for verification") }
                SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            }
        }
        if !isIPAddress(name) {
            _ = name.withCString { SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), UnsafeMutableRawPointer(mutating: $0)) }
        }
        while true {
            ERR_clear_error()
            let rc = SSL_connect(ssl)
            if rc == 1 { break }
            let err = SSL_get_error(ssl, rc)
            switch err {
            case SSL_ERROR_WANT_READ: try conn.wait(events: Int16(POLLIN), deadline: connectDeadline, what: "TLS handshake")
            case SSL_ERROR_WANT_WRITE: try conn.wait(events: Int16(POLLOUT), deadline: connectDeadline, what: "TLS handshake")
            default:
                conn.isBroken = true
                let verify = SSL_get_verify_result(ssl)
                if verify != X509_V_OK {
                    let reason = X509_verify_cert_error_string(verify).map { String(cString: $0) } ?? "code \(verify)"
                    throw .certificateVerification(reason)
                }
                throw .tls(openSSLErrorText("handshake failed"))
            }
        }
        return conn
    }

    func write(_ bytes: [UInt8], deadline: Date) throws(TransportError) {
        var offset = 0
        guard let ssl else {
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
                if n > 0 { offset += n; continue }
                if n < 0 && (errno == EAGAIN || errno == EINTR) { try wait(events: Int16(POLLOUT), deadline: deadline, what: "write"); continue }
                isBroken = true
                throw .connect("write: \(String(cString: strerror(errno)))")
            }
            return
        }
        while offset < bytes.count {
            ERR_clear_error()
            let n = bytes.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + offset, Int32(bytes.count - offset)) }
            if n > 0 { offset += Int(n); continue }
            try handle(SSL_get_error(ssl, n), deadline: deadline, what: "write")
        }
    }

    /// Reads some bytes (at least one) or throws `.closed` at EOF. The deadline is checked on every call, not only
    /// when a read would block: a server that keeps data flowing must not keep us past it.
    func read(deadline: Date) throws(TransportError) -> [UInt8] {
        guard deadline.timeIntervalSinceNow > 0 else { isBroken = true; throw .timeout("read") }
        var buf = [UInt8](repeating: 0, count: 16 * 1024)
        guard let ssl else {
            while true {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 { return Array(buf[0..<n]) }
                if n == 0 { isBroken = true; throw .closed }
                if errno == EAGAIN || errno == EINTR { try wait(events: Int16(POLLIN), deadline: deadline, what: "read"); continue }
                isBroken = true
                throw .connect("read: \(String(cString: strerror(errno)))")
            }
        }
        while true {
            ERR_clear_error()
            let n = buf.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            if n > 0 { return Array(buf[0..<Int(n)]) }
            let err = SSL_get_error(ssl, n)
            if err == SSL_ERROR_ZERO_RETURN { isBroken = true; throw .closed }
            try handle(err, deadline: deadline, what: "read")
        }
    }

    /// True when the idle connection has data or EOF pending (a server-closed keep-alive connection).
    func looksStale() -> Bool {
        if isBroken { return true }
        if let ssl, SSL_pending(ssl) > 0 { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) != 0
    }

    private func handle(_ err: Int32, deadline: Date, what: String) throws(TransportError) {
        switch err {
        case SSL_ERROR_WANT_READ: try wait(events: Int16(POLLIN), deadline: deadline, what: what)
        case SSL_ERROR_WANT_WRITE: try wait(events: Int16(POLLOUT), deadline: deadline, what: what)
        case SSL_ERROR_SYSCALL:
            isBroken = true
            let e = errno
            throw e == 0 ? .closed : .connect("\(what): \(String(cString: strerror(e)))")
        default:
            isBroken = true
            throw .tls(openSSLErrorText(what))
        }
    }

    private func wait(events: Int16, deadline: Date, what: String) throws(TransportError) {
        let remaining = deadline.timeIntervalSinceNow
        guard remaining > 0 else { isBroken = true; throw .timeout(what) }
        var p = pollfd(fd: fd, events: events, revents: 0)
        let rc = poll(&p, 1, Int32(min(remaining * 1000, 60_000).rounded(.up)))
        if rc == 0 { isBroken = true; throw .timeout(what) }
        if rc < 0 && errno != EINTR { isBroken = true; throw .connect("poll: \(String(cString: strerror(errno)))") }
    }

    static func isIPAddress(_ s: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }

    /// Non-blocking connect to each resolved address in turn, all within the deadline.
    /// One resolved address, copied out of getaddrinfo's list.
    struct ResolvedAddress: @unchecked Sendable {  // plain bytes
        var family: Int32
        var storage: sockaddr_storage
        var length: socklen_t
    }

    /// getaddrinfo, copying the list out. `numericOnly` never touches DNS.
    private static func lookup(host: String, port: UInt16, numericOnly: Bool) -> Result<[ResolvedAddress], TransportError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = numericOnly ? AI_NUMERICHOST : 0
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, list != nil else { return .failure(.resolve("\(host): \(String(cString: gai_strerror(rc)))")) }
        defer { freeaddrinfo(list) }
        var out: [ResolvedAddress] = []
        var cursor = list
        while let ai = cursor {
            var storage = sockaddr_storage()
            let length = min(Int(ai.pointee.ai_addrlen), MemoryLayout<sockaddr_storage>.size)
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: ai.pointee.ai_addr, count: length))
            }
            out.append(ResolvedAddress(family: ai.pointee.ai_family, storage: storage, length: socklen_t(length)))
            cursor = ai.pointee.ai_next
        }
        return .success(out)
    }

    /// getaddrinfo has no timeout of its own (a dead DNS server can block it for many seconds), so names are
    /// resolved on their own thread and the caller stops waiting at the deadline. IP literals resolve inline.
    static func resolve(host: String, port: UInt16, deadline: Date) throws(TransportError) -> [ResolvedAddress] {
        if isIPAddress(host) { return try lookup(host: host, port: port, numericOnly: true).get() }
        // Written by the resolver thread before it signals; read only after the signal.
        final class Box: @unchecked Sendable { var result: Result<[ResolvedAddress], TransportError>? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        startThread(name: "kekd-resolve", stackSize: 256 << 10) {
            box.result = lookup(host: host, port: port, numericOnly: false)
            done.signal()
        }
        let remaining = max(0, deadline.timeIntervalSinceNow)
        guard done.wait(timeout: .now() + remaining) == .success, let result = box.result else { throw .timeout("resolve \(host)") }
        return try result.get()
    }

    private static func connectTCP(host: String, port: UInt16, deadline: Date) throws(TransportError) -> Int32 {
        let addresses = try resolve(host: host, port: port, deadline: deadline)
        var lastError = TransportError.connect("\(host):\(port): no address")
        for var address in addresses {
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { lastError = .connect("socket: \(String(cString: strerror(errno)))"); continue }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let rc = withUnsafePointer(to: &address.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, address.length) }
            }
            if rc == 0 { return fd }
            guard errno == EINPROGRESS else {
                lastError = .connect("\(host):\(port): \(String(cString: strerror(errno)))")
                Glibc.close(fd); continue
            }
            let remaining = deadline.timeIntervalSinceNow
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let prc = remaining > 0 ? poll(&p, 1, Int32(min(remaining * 1000, 60_000).rounded(.up))) : 0
            if prc <= 0 {
                Glibc.close(fd)
                throw .timeout("connect to \(host):\(port)")
            }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            if soError == 0 { return fd }
            lastError = .connect("\(host):\(port): \(String(cString: strerror(soError)))")
            Glibc.close(fd)
        }
        throw lastError
    }
}
