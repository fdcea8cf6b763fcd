import Foundation
import Testing
@testable import HTTPClient
#if canImport(Glibc)
import Glibc
#endif

/// A TCP listener on 127.0.0.1 that never accepts: the kernel completes the TCP handshake, nobody answers TLS.
private final class SilentListener {
    let fd: Int32
    let port: UInt16
    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else { close(fd); throw TransportError.connect("test listener") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = UInt16(bigEndian: addr.sin_port)
    }
    deinit { close(fd) }
}

@Suite struct HTTPSClientTests {
    @Test func endpointParsing() throws {
        let e = try Endpoint(url: "https://Vault.Example:8200/")
        #expect(e.secure && e.host == "Vault.Example" && e.port == 8200 && e.hostHeader == "Vault.Example:8200")
        #expect(try Endpoint(url: "https://[fd00::1]").hostHeader == "[fd00::1]")
        #expect(try Endpoint(url: "http://h").port == 80)
        for bad in ["https://", "https://h:0", "https://h:x", "https://h/v1", "https://[::1", "vault:8200"] {
            #expect(throws: AddressError.self, "\(bad)") { try Endpoint(url: bad) }
        }
    }

    @Test func aServerThatNeverAnswersTLSCostsOneConnectTimeout() throws {
        let listener = try SilentListener()
        let client = try HTTPSClient(endpoint: try Endpoint(url: "https://127.0.0.1:\(listener.port)"), tls: TLSSettings(), connectTimeout: 0.3)
        let started = Date()
        #expect(throws: TransportError.timeout("TLS handshake")) {
            try client.send(HTTPRequest(method: "GET", path: "/v1/sys/health"), deadline: Date(timeIntervalSinceNow: 5))
        }
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed >= 0.25 && elapsed < 1.0, "\(elapsed)")
    }

    @Test func requestTimeoutBoundsAPlainServerThatNeverResponds() throws {
        let listener = try SilentListener()
        let client = try HTTPSClient(endpoint: try Endpoint(url: "http://127.0.0.1:\(listener.port)"), tls: TLSSettings(), connectTimeout: 1)
        let started = Date()
        #expect(throws: TransportError.timeout("read")) {
            try client.send(HTTPRequest(method: "GET", path: "/"), deadline: Date(timeIntervalSinceNow: 0.3))
        }
        #expect(Date().timeIntervalSince(started) < 1.0)
    }

    @Test func nameResolutionIsBoundedByTheDeadline() {
        let started = Date()
        do {
            _ = try TLSConnection.resolve(host: "kekd-test.invalid", port: 8200, deadline: Date(timeIntervalSinceNow: 0.5))
            Issue.record("an .invalid name resolved")
        } catch {
            switch error {
            case .resolve, .timeout: break
            default: Issue.record("unexpected \(error)")
            }
        }
        #expect(Date().timeIntervalSince(started) < 1.0)
        #expect((try? TLSConnection.resolve(host: "::1", port: 1, deadline: Date()))?.first?.family == AF_INET6)
    }

    @Test func badCAFileFailsAtConstruction() {
        #expect(throws: TransportError.self) {
            try HTTPSClient(endpoint: try Endpoint(url: "https://127.0.0.1:1"), tls: TLSSettings(caFile: "/nonexistent/ca.pem"))
        }
    }
}
