import Foundation
import HPACK
import Testing
@testable import HTTP2

/// Not a timed test: prints the in-memory cost of unary calls through both roles when KEKD_HTTP2_BENCH is set
/// (run with `swift test -c release --filter HTTP2Benchmark`).
@Suite(.enabled(if: ProcessInfo.processInfo.environment["KEKD_HTTP2_BENCH"] != nil, "set KEKD_HTTP2_BENCH to run"))
struct HTTP2Benchmark {
    @Test func unaryCalls() {
        let client = HTTP2Connection(role: .client)
        let server = HTTP2Connection(role: .server)
        pump(client, server, onServer: { _ in }, onClient: { _ in })
        let request = ConversationTests.request("/v2.KeyManagementService/Decrypt")
            + [HeaderField(name: "user-agent", value: "grpc-go/1.72.0"), HeaderField(name: "grpc-timeout", value: "2999870u")]
        let body = [UInt8](repeating: 7, count: 37)
        let calls = 200_000
        var serverNanos: UInt64 = 0
        var completed = 0
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<calls {
            guard let id = client.openStream() else { break }
            client.sendHeaders(streamID: id, fields: request, endStream: false)
            client.sendData(streamID: id, bytes: body, endStream: true)
            let toServer = client.takeOutput()
            let t0 = DispatchTime.now().uptimeNanoseconds
            for event in server.receive(toServer[...]) {
                if case let .data(sid, bytes, true) = event {
                    server.sendHeaders(streamID: sid, fields: okStatus, endStream: false)
                    server.sendData(streamID: sid, bytes: bytes, endStream: false)
                    server.sendHeaders(streamID: sid, fields: okTrailers, endStream: true)
                }
            }
            let toClient = server.takeOutput()
            serverNanos += DispatchTime.now().uptimeNanoseconds - t0
            for event in client.receive(toClient[...]) {
                if case .headers(_, _, true) = event { completed += 1 }
            }
        }
        let total = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print("HTTP2 unary: \(completed) calls, both roles \(Int(Double(completed) / total)) calls/s,"
              + " server side \(Double(serverNanos) / Double(completed) / 1000) µs/call")
        #expect(completed == calls)
        #expect(server.openStreamCount == 0)
    }
}
