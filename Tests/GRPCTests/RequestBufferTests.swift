import HPACK
import HTTP2
import Testing
@testable import GRPC
import GRPCCodes

private let encryptPath = "/v2.KeyManagementService/Encrypt"
private let requestFields = [
    HeaderField(name: ":method", value: "POST"), HeaderField(name: ":scheme", value: "http"),
    HeaderField(name: ":path", value: encryptPath), HeaderField(name: ":authority", value: "localhost"),
    HeaderField(name: "content-type", value: "application/grpc"), HeaderField(name: "te", value: "trailers"),
]

/// A server-wide budget for one thread.
private final class CountingBudget: RequestBufferBudget, @unchecked Sendable {
    let limit: Int
    var used = 0
    init(limit: Int) { self.limit = limit }
    func reserve(_ bytes: Int) -> Bool {
        guard used + bytes <= limit else { return false }
        used += bytes
        return true
    }
    func release(_ bytes: Int) { used -= bytes }
}

/// A raw client-role HTTP/2 connection (it respects the server's windows) wired to `server`.
private struct RawClient {
    let http2 = HTTP2Connection(role: .client)
    let server: GRPCServerConnection

    init(_ server: GRPCServerConnection) {
        self.server = server
        _ = pump()
    }

    /// Opens a stream and queues the first `count` bytes of a message declaring `declared` bytes.
    func start(declared: Int, sending count: Int, endStream: Bool = false) -> UInt32 {
        let id = http2.openStream()!
        http2.sendHeaders(streamID: id, fields: requestFields, endStream: false)
        send(id, MessageFraming.frame([UInt8](repeating: 3, count: declared)).prefix(count), endStream: endStream)
        return id
    }

    func send(_ id: UInt32, _ bytes: ArraySlice<UInt8>, endStream: Bool = false) {
        http2.sendData(streamID: id, bytes: Array(bytes), endStream: endStream)
    }

    func pump(now: UInt64? = nil) -> [GRPCServerEvent] {
        var events: [GRPCServerEvent] = []
        for _ in 0..<200 {
            var moved = false
            if http2.hasOutput { events += server.receive(http2.takeOutput()[...], now: now); moved = true }
            if server.http2.hasOutput { _ = http2.receive(server.http2.takeOutput()[...]); moved = true }
            if !moved { break }
        }
        return events
    }
}

private func protocolErrorKinds(_ events: [GRPCServerEvent]) -> [String] {
    events.compactMap { if case let .streamProtocolError(kind, _) = $0 { kind.rawValue } else { nil } }
}

private func rejections(_ events: [GRPCServerEvent]) -> [UInt32: GRPCStatusCode] {
    var out: [UInt32: GRPCStatusCode] = [:]
    for case let .rejected(id, _, status) in events { out[id] = status.code }
    return out
}

@Suite struct RequestBufferTests {
    @Test func theStreamThatCrossesTheConnectionCapIsRefused() throws {
        var limits = GRPCServerLimits()
        limits.maxBufferedRequestBytesPerConnection = 100_000
        let server = GRPCServerConnection(knownPaths: [encryptPath], limits: limits)
        let client = RawClient(server)
        let first = client.start(declared: 90_000, sending: 60_000)
        let second = client.start(declared: 90_000, sending: 60_000)
        let events = client.pump()
        #expect(rejections(events) == [second: .resourceExhausted])
        #expect(protocolErrorKinds(events) == ["request_buffer_limit"])
        #expect(server.bufferedRequestBytes == 60_000)
        // The first request completes and is handed over; nothing stays held.
        client.send(first, MessageFraming.frame([UInt8](repeating: 3, count: 90_000))[60_000...], endStream: true)
        let calls = client.pump().compactMap { if case let .call(request) = $0 { request } else { nil } }
        #expect(calls.map(\.streamID) == [first] && calls.first?.message.count == 90_000)
        #expect(server.bufferedRequestBytes == 0)
        #expect(server.http2.bufferedInboundBytes == 0)
    }

    @Test func theServerWideBudgetRefusesAndIsGivenBack() throws {
        let budget = CountingBudget(limit: 50_000)
        let server = GRPCServerConnection(knownPaths: [encryptPath], budget: budget)
        let client = RawClient(server)
        let refused = client.start(declared: 90_000, sending: 60_000)
        let events = client.pump()
        #expect(rejections(events) == [refused: .resourceExhausted])
        #expect(protocolErrorKinds(events) == ["server_request_buffer_limit"])
        #expect(budget.used == 0)
        _ = client.start(declared: 90_000, sending: 40_000)
        _ = client.pump()
        #expect(budget.used == 40_000)
        server.releaseBufferedRequests()   // the connection ends
        #expect(budget.used == 0)
        // A small request that ends in its first DATA frame never touches the budget.
        budget.used = 50_000
        _ = client.start(declared: 100, sending: 105, endStream: true)
        #expect(client.pump().contains { if case .call = $0 { true } else { false } })
    }

    @Test func aMessageLargerThanTheStreamWindowStillCompletes() throws {
        var limits = GRPCServerLimits()
        limits.http2.initialWindowSize = 65_536
        let server = GRPCServerConnection(knownPaths: [encryptPath], limits: limits)
        let client = RawClient(server)
        // Credit returns only on consumption: without credit for the declared rest, this would stall at 64 KiB.
        let id = client.start(declared: 300_000, sending: 300_005, endStream: true)
        let calls = client.pump().compactMap { if case let .call(request) = $0 { request } else { nil } }
        #expect(calls.map(\.streamID) == [id] && calls.first?.message.count == 300_000)
    }

    @Test func anIncompleteRequestTimesOutAndReleasesWhatItHeld() throws {
        let budget = CountingBudget(limit: 1 << 20)
        var limits = GRPCServerLimits()
        limits.requestTimeoutNanos = 5_000
        let server = GRPCServerConnection(knownPaths: [encryptPath], limits: limits, budget: budget)
        let client = RawClient(server)
        _ = client.start(declared: 1000, sending: 500)
        _ = client.pump(now: 1_000)
        #expect(server.nextRequestDeadline == 6_000 && budget.used == 500)
        #expect(server.expireIncompleteRequests(now: 5_999).isEmpty)
        #expect(protocolErrorKinds(server.expireIncompleteRequests(now: 6_000)) == ["request_timeout"])
        #expect(budget.used == 0 && server.bufferedRequestBytes == 0 && server.http2.openStreamCount == 0)
    }
}

@Test func messageReaderReportsWhatIsMissing() throws {
    var reader = MessageReader(maxMessageSize: 1000)
    try reader.append([0, 0, 0])
    #expect(reader.bytesToCompleteMessage == nil && reader.pendingBytes == 3)
    try reader.append([3, 0xE8, 1, 2])   // declares 1000 bytes, 2 of them here
    #expect(reader.bytesToCompleteMessage == 998 && reader.pendingBytes == 7)
    try reader.append([UInt8](repeating: 9, count: 998) + [0, 0, 0, 0, 0])   // completes, then an empty message
    #expect(reader.messages.map(\.count) == [1000, 0] && reader.pendingBytes == 0)
}
