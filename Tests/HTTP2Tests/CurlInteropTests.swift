import Foundation
import Glibc
import HPACK
import Testing
@testable import HTTP2

private let curlPath = "/usr/bin/curl"

/// Serves one connection on a unix socket with an echo handler; returns when the peer closes.
private func serveEcho(listener: Int32) -> (served: Int, events: [HTTP2Event]) {
    let fd = accept(listener, nil, nil)
    guard fd >= 0 else { return (0, []) }
    defer { close(fd) }
    let server = HTTP2Connection(role: .server)
    var bodies: [UInt32: [UInt8]] = [:]
    var served = 0
    var unexpected: [HTTP2Event] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    func flush() -> Bool {
        let out = server.takeOutput()
        var offset = 0
        while offset < out.count {
            let n = out[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
    guard flush() else { return (0, []) }
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        for event in server.receive(buffer[0..<n]) {
            switch event {
            case let .headers(id, _, endStream):
                bodies[id] = []
                if endStream { unexpected.append(event) }
            case let .data(id, bytes, endStream):
                bodies[id, default: []] += bytes
                guard endStream else { continue }
                let body = bodies[id] ?? []
                server.sendHeaders(streamID: id, fields: [HeaderField(name: ":status", value: "200"),
                                                          HeaderField(name: "content-length", value: "\(body.count)")],
                                   endStream: false)
                server.sendData(streamID: id, bytes: body, endStream: true)
                served += 1
            case .settingsAcked, .goAwayReceived:
                break
            default:
                unexpected.append(event)
            }
        }
        guard flush(), !server.didFail else { break }
    }
    return (served, unexpected)
}

/// curl speaks HTTP/2 through nghttp2, a strict C implementation: a second independent peer for our frames.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: curlPath), "needs curl with nghttp2"))
struct CurlInteropTests {
    @Test func curlUploadsAreEchoed() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kekd-h2-curl-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let socketPath = dir.appendingPathComponent("s.sock").path

        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in socketPath.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0 && listen(listener, 4) == 0)

        // One transfer per curl run: curl 7.88's reuse of a prior-knowledge HTTP/2 connection is broken
        // (curl/curl#10634), so multiplexing is covered by the Python h2 test instead.
        for size in [1, 70_000, 300_000] {
            let body = Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) })
            let input = dir.appendingPathComponent("in")
            let output = dir.appendingPathComponent("out")
            try body.write(to: input)
            let curl = Process()
            curl.executableURL = URL(fileURLWithPath: curlPath)
            curl.arguments = ["--http2-prior-knowledge", "--unix-socket", socketPath, "--silent", "--show-error",
                              "--fail", "--max-time", "30", "--data-binary", "@\(input.path)", "-o", output.path,
                              "http://localhost/echo"]
            let stderr = Pipe()
            curl.standardError = stderr

            nonisolated(unsafe) var result: (served: Int, events: [HTTP2Event]) = (0, [])
            let done = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                result = serveEcho(listener: listener)
                done.signal()
            }
            try curl.run()
            curl.waitUntilExit()
            let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(curl.terminationStatus == 0, "curl: \(message)")
            #expect(done.wait(timeout: .now() + 30) == .success)
            #expect(result.events.isEmpty)
            #expect(result.served == 1)
            #expect((try? Data(contentsOf: output)) == body, "body of \(size) bytes")
        }
    }
}
