import Foundation
import Glibc
import Metrics
import Synchronization
import Testing
@testable import Server

/// A raw TCP client for the tests: exact bytes out, everything until EOF back.
struct RawClient {
    let fd: Int32

    init(port: UInt16, host: String = "127.0.0.1") throws {
        let v6 = host.contains(":")
        fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var result: Int32
        if v6 {
            var addr = sockaddr_in6()
            addr.sin6_family = sa_family_t(AF_INET6)
            addr.sin6_port = port.bigEndian
            inet_pton(AF_INET6, host, &addr.sin6_addr)
            result = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        } else {
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            inet_pton(AF_INET, host, &addr.sin_addr)
            result = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard result == 0 else {
            let code = errno
            _ = Glibc.close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
    }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads until EOF or `timeout` seconds; nil on timeout.
    func readAll(timeout: Double = 5) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(left * 1000) + 1) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return out }
            out += chunk[..<n]
        }
    }

    func close() { _ = Glibc.close(fd) }
}

struct HTTPReply {
    var status: Int
    var headers: [String: String]
    var body: String

    init?(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return nil }
        let headLines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        let statusParts = headLines[0].split(separator: " ")
        guard statusParts.count >= 2, statusParts[0] == "HTTP/1.1", let code = Int(statusParts[1]) else { return nil }
        status = code
        headers = [:]
        for line in headLines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        body = String(text[split.upperBound...])
    }
}

final class CheckState: Sendable {
    let backendOK = Atomic(true)
}

@Suite(.serialized) struct HealthServerTests {
    static func makeServer(limits: HealthServerLimits = HealthServerLimits(), state: CheckState = CheckState(),
                           host: String = "127.0.0.1") throws -> HealthServer {
        let metrics = KekdMetrics(version: "0.1.0-test", backend: "file")
        metrics.setKeyID("kek-test")
        let checks = [
            ReadinessCheck(name: "socket") { (true, "listening on /tmp/x.sock") },
            ReadinessCheck(name: "backend") {
                state.backendOK.load(ordering: .relaxed) ? (true, "key_id kek-test") : (false, "key file unreadable")
            },
        ]
        let server = HealthServer(host: host, port: 0, metrics: metrics, checks: checks, limits: limits)
        try server.start()
        return server
    }

    static func request(_ server: HealthServer, _ raw: String, host: String = "127.0.0.1") throws -> HTTPReply {
        let client = try RawClient(port: server.boundPort, host: host)
        defer { client.close() }
        client.send(raw)
        let bytes = try #require(client.readAll())
        return try #require(HTTPReply(bytes), "unparseable reply: \(String(decoding: bytes, as: UTF8.self))")
    }

    static func get(_ server: HealthServer, _ path: String, method: String = "GET") throws -> HTTPReply {
        try request(server, "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.33\r\n\r\n")
    }

    @Test func livezAnswersOK() throws {
        let server = try Self.makeServer()
        defer { server.stop() }
        #expect(server.boundPort != 0)
        let reply = try Self.get(server, "/livez")
        #expect(reply.status == 200)
        #expect(reply.body == "ok\n")
        #expect(reply.headers["connection"] == "close")
        #expect(reply.headers["content-length"] == "3")
    }

    @Test func readyzNamesEveryCheckAndFailsWith503() throws {
        let state = CheckState()
        let server = try Self.makeServer(state: state)
        defer { server.stop() }
        let ok = try Self.get(server, "/readyz")
        #expect(ok.status == 200)
        #expect(ok.body == "[+]socket ok\n[+]backend ok\nreadyz check passed\n")

        state.backendOK.store(false, ordering: .relaxed)
        let failing = try Self.get(server, "/readyz")
        #expect(failing.status == 503)
        // Names and states only: the detail ("key file unreadable") is for the log, not for any local user.
        #expect(failing.body == "[+]socket ok\n[-]backend failed\nreadyz check failed\n")

        let alias = try Self.get(server, "/healthz")
        #expect(alias.status == 503)
        #expect(alias.body.hasSuffix("healthz check failed\n"))
        #expect(alias.body.contains("[-]backend failed"))
    }

    @Test func verboseSingleCheckAndExclude() throws {
        let state = CheckState()
        let server = try Self.makeServer(state: state)
        defer { server.stop() }
        let verbose = try Self.get(server, "/readyz?verbose")
        #expect(verbose.status == 200)
        #expect(verbose.body == "[+]socket ok\n[+]backend ok\nreadyz check passed\n")
        #expect(!verbose.body.contains("/tmp/x.sock"))

        state.backendOK.store(false, ordering: .relaxed)
        #expect(try Self.get(server, "/readyz/socket").status == 200)
        #expect(try Self.get(server, "/readyz/backend").status == 503)
        #expect(try Self.get(server, "/readyz/nope").status == 404)
        let excluded = try Self.get(server, "/readyz?verbose&exclude=backend")
        #expect(excluded.status == 200)
        #expect(excluded.body.contains("[+]backend excluded: ok"))
    }

    @Test func metricsServesPrometheusText() throws {
        let server = try Self.makeServer()
        defer { server.stop() }
        let reply = try Self.get(server, "/metrics")
        #expect(reply.status == 200)
        #expect(reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(reply.body.contains("# TYPE kekd_grpc_requests_total counter\n"))
        #expect(reply.body.contains("kekd_key_info{key_id=\"kek-test\"} 1\n"))
        #expect(reply.headers["content-length"] == String(reply.body.utf8.count))
    }

    @Test func headHasHeadersButNoBody() throws {
        let server = try Self.makeServer()
        defer { server.stop() }
        let reply = try Self.get(server, "/livez", method: "HEAD")
        #expect(reply.status == 200)
        #expect(reply.headers["content-length"] == "3")
        #expect(reply.body.isEmpty)
    }

    @Test func unknownPathMethodAndGarbage() throws {
        let server = try Self.makeServer()
        defer { server.stop() }
        #expect(try Self.get(server, "/").status == 404)
        #expect(try Self.get(server, "/livez/../metrics").status == 404)
        let post = try Self.get(server, "/livez", method: "POST")
        #expect(post.status == 405)
        #expect(post.headers["allow"] == "GET, HEAD")
        #expect(try Self.get(server, "/metrics", method: "DELETE").status == 405)
        for garbage in ["HELLO\r\n\r\n", "GET /livez\r\n\r\n", "GET /livez HTTP/2.0\r\n\r\n", "GET livez HTTP/1.1\r\n\r\n",
                        "GET /livez HTTP/1.1\r\nno colon here\r\n\r\n", "GET /li\u{1}vez HTTP/1.1\r\n\r\n",
                        "GET  /livez HTTP/1.1\r\n\r\n", "G(T /livez HTTP/1.1\r\n\r\n", "\u{16}\u{3}\u{1}\r\n\r\n"] {
            let reply = try Self.request(server, garbage)
            #expect(reply.status == 400, "for \(garbage.debugDescription)")
        }
        // Binary junk that never forms a head (e.g. a TLS ClientHello) ends by size or timeout, never a hang.
        #expect(try Self.get(server, "/livez").status == 200)
    }

    @Test func oversizedHeadIsRejected() throws {
        let server = try Self.makeServer()
        defer { server.stop() }
        let huge = "GET /livez HTTP/1.1\r\nX-Fill: " + String(repeating: "a", count: 9000) + "\r\n\r\n"
        let reply = try Self.request(server, huge)
        #expect(reply.status == 431)
        #expect(try Self.get(server, "/livez").status == 200)
    }

    @Test func slowClientDoesNotBlockOthersAndTimesOut() throws {
        var limits = HealthServerLimits()
        limits.readTimeoutSeconds = 1
        let server = try Self.makeServer(limits: limits)
        defer { server.stop() }
        let slow = try RawClient(port: server.boundPort)
        defer { slow.close() }
        slow.send("GET /li")
        let started = Date()
        #expect(try Self.get(server, "/livez").status == 200)
        #expect(Date().timeIntervalSince(started) < 0.9)   // a blocked server would answer only after the 1 s timeout
        // Trickling bytes does not extend the deadline: the whole head must arrive within it.
        slow.send("v")
        Thread.sleep(forTimeInterval: 0.4)
        slow.send("e")
        let bytes = try #require(slow.readAll(timeout: 3))
        #expect(HTTPReply(bytes)?.status == 408)
        #expect(Date().timeIntervalSince(started) < 2)
    }

    @Test func atTheCapTheOldestIncompleteConnectionMakesRoom() throws {
        var limits = HealthServerLimits()
        limits.maxConnections = 2
        let server = try Self.makeServer(limits: limits)
        defer { server.stop() }
        let oldest = try RawClient(port: server.boundPort)
        defer { oldest.close() }
        oldest.send("GET /li")
        Thread.sleep(forTimeInterval: 0.1)
        let second = try RawClient(port: server.boundPort)
        defer { second.close() }
        second.send("GET /li")
        Thread.sleep(forTimeInterval: 0.1)   // let the loop admit both: the cap is reached
        // A new connection is served, not refused: the oldest incomplete one is closed for it.
        let started = Date()
        #expect(try Self.get(server, "/livez").status == 200)
        #expect(Date().timeIntervalSince(started) < 0.5)
        #expect(oldest.readAll(timeout: 2) == [])   // closed without an answer
        // The younger one keeps its slot and is answered when it completes its request.
        second.send("vez HTTP/1.1\r\n\r\n")
        #expect(second.readAll(timeout: 2).flatMap(HTTPReply.init)?.status == 200)
        let metrics = try Self.get(server, "/metrics")
        #expect(metrics.body.contains("kekd_health_connections_evicted_total 1\n"))
    }

    @Test func manyStalledConnectionsDoNotDelayLivez() throws {
        let server = try Self.makeServer()
        defer { server.stop() }
        let stalled = try (0..<200).map { _ in try RawClient(port: server.boundPort) }
        defer { stalled.forEach { $0.close() } }
        stalled.forEach { $0.send("GET /livez HTTP/1.1\r\n") }
        Thread.sleep(forTimeInterval: 0.2)
        for _ in 0..<5 {
            let started = Date()
            #expect(try Self.get(server, "/livez").status == 200)
            #expect(Date().timeIntervalSince(started) < 0.1)
        }
    }

    @Test func aTakenPortIsRetriedInTheBackground() throws {
        let squatter = try Self.makeServer()
        let port = squatter.boundPort
        let metrics = KekdMetrics(version: "1", backend: "file")
        var limits = HealthServerLimits()
        limits.bindRetrySeconds = 0.05
        limits.maxBindRetrySeconds = 0.1
        let server = HealthServer(host: "127.0.0.1", port: port, metrics: metrics, checks: [], limits: limits)
        try server.start(retryingBind: true)   // does not throw: the bind is retried
        defer { server.stop() }
        #expect(server.boundPort == 0)
        #expect(metrics.render().contains("kekd_health_bind_failures_total 1\n"))
        #expect(metrics.render().contains("kekd_health_listening 0\n"))
        squatter.stop()
        var bound = false
        for _ in 0..<100 where !bound {
            Thread.sleep(forTimeInterval: 0.02)
            bound = server.boundPort == port
        }
        #expect(bound)
        #expect(try Self.get(server, "/livez").status == 200)
        #expect(metrics.render().contains("kekd_health_listening 1\n"))
    }

    @Test func servesOnIPv6Loopback() throws {
        let server: HealthServer
        do {
            server = try Self.makeServer(host: "[::1]")
        } catch HealthServerError.socketFailed(_, let code) where code == EADDRNOTAVAIL || code == EAFNOSUPPORT {
            return   // no IPv6 on this machine's loopback
        }
        defer { server.stop() }
        let reply = try Self.request(server, "GET /livez HTTP/1.1\r\n\r\n", host: "::1")
        #expect(reply.status == 200)
    }

    @Test func badAddressesAreReported() throws {
        let metrics = KekdMetrics(version: "1", backend: "file")
        #expect(throws: HealthServerError.invalidAddress("example.com")) {
            try HealthServer(host: "example.com", port: 0, metrics: metrics, checks: []).start()
        }
        let first = try Self.makeServer()
        defer { first.stop() }
        let second = HealthServer(host: "127.0.0.1", port: first.boundPort, metrics: metrics, checks: [])
        #expect {
            try second.start()
        } throws: { error in
            guard case HealthServerError.socketFailed(_, let code) = error else { return false }
            return code == EADDRINUSE
        }
    }

    @Test func healthAddressFlagValuesParse() throws {
        #expect(try HealthServer.parseAddress("127.0.0.1:8787") == ("127.0.0.1", 8787))
        #expect(try HealthServer.parseAddress("[::1]:9000") == ("::1", 9000))
        #expect(try HealthServer.parseAddress("localhost:0") == ("localhost", 0))
        for bad in ["127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "::1:8787", "example.com:80", ":8787",
                    "[::1:8787", "127.0.0.1:-1", "1.2.3:80"] {
            #expect(throws: HealthServerError.self, "\(bad)") { try HealthServer.parseAddress(bad) }
        }
    }

    @Test func stopClosesTheListenerPromptlyEvenWithIdleClients() throws {
        let server = try Self.makeServer()
        let port = server.boundPort
        let idle = try RawClient(port: port)
        defer { idle.close() }
        Thread.sleep(forTimeInterval: 0.1)
        let started = Date()
        server.stop()
        #expect(Date().timeIntervalSince(started) < 1)
        server.stop()   // idempotent
        #expect(throws: POSIXError.self) { try RawClient(port: port) }
    }

    @Test func parserFindsTheEndOfTheHead() {
        let bytes = Array("GET / HTTP/1.1\r\nA: b\r\n\r\nrest".utf8)
        #expect(HealthRequest.endOfHead(bytes[...], from: 0) == bytes.count - 4)
        #expect(HealthRequest.endOfHead(Array("GET / HTTP/1.0\n\n".utf8)[...], from: 0) == 16)
        #expect(HealthRequest.endOfHead(Array("GET / HTTP/1.1\r\n".utf8)[...], from: 0) == nil)
        let parsed = HealthRequest.parse(Array("\r\nGET /readyz?verbose&exclude=a HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(parsed == .success(HealthRequest(method: "GET", path: "/readyz", query: "verbose&exclude=a")))
    }
}
