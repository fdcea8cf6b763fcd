import HPACK
import HTTP2
import Testing
@testable import GRPC

private let statusPath = "/v2.KeyManagementService/Status"

/// Moves bytes between an in-memory client and server until both are quiet.
private func pump(_ client: GRPCClientConnection, _ server: GRPCServerConnection) -> (client: [GRPCClientEvent], server: [GRPCServerEvent]) {
    var clientEvents: [GRPCClientEvent] = [], serverEvents: [GRPCServerEvent] = []
    for _ in 0..<100 {
        var moved = false
        if client.http2.hasOutput { serverEvents += server.receive(client.http2.takeOutput()[...]); moved = true }
        if server.http2.hasOutput { clientEvents += client.receive(server.http2.takeOutput()[...]); moved = true }
        if !moved { break }
    }
    return (clientEvents, serverEvents)
}

private func calls(_ events: [GRPCServerEvent]) -> [GRPCRequest] {
    events.compactMap { if case .call(let r) = $0 { return r } else { return nil } }
}

private func responses(_ events: [GRPCClientEvent]) -> [UInt32: GRPCResponse] {
    var out: [UInt32: GRPCResponse] = [:]
    for e in events { if case let .response(id, r) = e { out[id] = r } }
    return out
}

@Test func unaryRoundTripCarriesMessageAndTimeout() throws {
    let server = GRPCServerConnection(knownPaths: [statusPath])
    let client = GRPCClientConnection()
    let id = try #require(client.startCall(path: statusPath, message: [1, 2, 3], timeoutNanos: 2_999_987_000))
    let first = pump(client, server)
    let request = try #require(calls(first.server).first)
    #expect(request.path == statusPath)
    #expect(request.message == [1, 2, 3])
    #expect(request.timeoutNanos == 2_999_987_000)
    #expect(server.respond(streamID: request.streamID, message: [9, 8]))
    let second = pump(client, server)
    #expect(responses(second.client)[id] == GRPCResponse(status: .ok, message: [9, 8]))
    #expect(server.inFlightCount == 0)
}

@Test func errorStatusIsTrailersOnlyWithEncodedMessage() throws {
    let server = GRPCServerConnection(knownPaths: [statusPath])
    let client = GRPCClientConnection()
    let id = try #require(client.startCall(path: statusPath, message: []))
    let request = try #require(calls(pump(client, server).server).first)
    let text = "key version 3 is retired — 100% sure\n"
    #expect(server.fail(streamID: request.streamID, status: GRPCStatus(.failedPrecondition, text)))
    let got = responses(pump(client, server).client)[id]
    #expect(got == GRPCResponse(status: GRPCStatus(.failedPrecondition, text), message: nil))
}

@Test func unknownMethodIsUnimplementedWithoutReachingTheService() throws {
    let server = GRPCServerConnection(knownPaths: [statusPath])
    let client = GRPCClientConnection()
    let id = try #require(client.startCall(path: "/v1beta1.KeyManagementService/Version", message: []))
    let result = pump(client, server)
    #expect(calls(result.server).isEmpty)
    #expect(responses(result.client)[id]?.status.code == .unimplemented)
    let rejected = result.server.contains { if case .rejected(_, let path, let s) = $0 { return path == "/v1beta1.KeyManagementService/Version" && s.code == .unimplemented } else { return false } }
    #expect(rejected)
}

@Test func oversizedMessageIsResourceExhausted() throws {
    var limits = GRPCServerLimits()
    limits.maxReceiveMessageSize = 1024
    let server = GRPCServerConnection(knownPaths: [statusPath], limits: limits)
    let client = GRPCClientConnection()
    let id = try #require(client.startCall(path: statusPath, message: [UInt8](repeating: 1, count: 5000)))
    let result = pump(client, server)
    #expect(calls(result.server).isEmpty)
    #expect(responses(result.client)[id]?.status.code == .resourceExhausted)
    // The connection is still usable.
    let id2 = try #require(client.startCall(path: statusPath, message: [1]))
    let request = try #require(calls(pump(client, server).server).first)
    server.respond(streamID: request.streamID, message: [])
    #expect(responses(pump(client, server).client)[id2]?.status == .ok)
}

@Test func manyConcurrentCallsAnsweredOutOfOrder() throws {
    let server = GRPCServerConnection(knownPaths: [statusPath])
    let client = GRPCClientConnection()
    var ids: [UInt32] = []
    for i in 0..<50 { ids.append(try #require(client.startCall(path: statusPath, message: [UInt8(i)]))) }
    let requests = calls(pump(client, server).server)
    #expect(requests.count == 50)
    for r in requests.reversed() { server.respond(streamID: r.streamID, message: Array(r.message) + r.message) }
    let got = responses(pump(client, server).client)
    #expect(got.count == 50)
    for (i, id) in ids.enumerated() { #expect(got[id]?.message == [UInt8(i), UInt8(i)]) }
}

@Test func respondAfterClientResetIsDropped() throws {
    let server = GRPCServerConnection(knownPaths: [statusPath])
    let client = GRPCClientConnection()
    let id = try #require(client.startCall(path: statusPath, message: []))
    let request = try #require(calls(pump(client, server).server).first)
    client.http2.resetStream(streamID: id, code: .cancel)
    let after = pump(client, server)
    #expect(after.server.contains { if case .cancelled(let s) = $0 { return s == request.streamID } else { return false } })
    #expect(!server.respond(streamID: request.streamID, message: [1]))
}

@Test func messageReaderReassemblesAcrossArbitrarySplits() throws {
    let framed = MessageFraming.frame([UInt8](repeating: 5, count: 300)) + MessageFraming.frame([1, 2])
    for split in [1, 2, 4, 5, 6, 100, 305, 306] {
        var reader = MessageReader(maxMessageSize: 1000)
        var i = 0
        while i < framed.count {
            try reader.append(Array(framed[i..<min(framed.count, i + split)]))
            i += split
        }
        #expect(reader.messages == [[UInt8](repeating: 5, count: 300), [1, 2]])
        #expect(reader.pendingBytes == 0)
    }
    var reader = MessageReader(maxMessageSize: 10)
    #expect(throws: MessageFramingError.tooLarge(length: 11, limit: 10)) { try reader.append([0, 0, 0, 0, 11]) }
    var compressed = MessageReader(maxMessageSize: 10)
    #expect(throws: MessageFramingError.compressedNotSupported) { try compressed.append([1, 0, 0, 0, 1, 0]) }
}

@Test func timeoutParsingAndEncoding() {
    #expect(GRPCTimeout.parse("2999987u") == 2_999_987_000)
    #expect(GRPCTimeout.parse("3S") == 3_000_000_000)
    #expect(GRPCTimeout.parse("1H") == 3_600_000_000_000)
    #expect(GRPCTimeout.parse("100n") == 100)
    #expect(GRPCTimeout.parse("5m") == 5_000_000)
    #expect(GRPCTimeout.parse("1M") == 60_000_000_000)
    #expect(GRPCTimeout.parse("") == nil)
    #expect(GRPCTimeout.parse("S") == nil)
    #expect(GRPCTimeout.parse("123456789S") == nil)  // 9 digits
    #expect(GRPCTimeout.parse("12x") == nil)
    #expect(GRPCTimeout.parse("-1S") == nil)
    #expect(GRPCTimeout.parse("99999999H") == UInt64.max)  // saturates instead of trapping
    // A literal, not `99_999_999 * 1_000_000_000`: #expect's thunk for `UInt64? == <UInt64 expression>` reads 9 bytes
    // from an 8-byte stack slot (Swift 6.3.1 miscompile; AddressSanitizer stack-buffer-overflow).
    #expect(GRPCTimeout.parse("99999999S") == 99_999_999_000_000_000)
    #expect(GRPCTimeout.encode(nanoseconds: 3_000_000_000) == "3000000u")
    #expect(GRPCTimeout.encode(nanoseconds: 50) == "50n")
    #expect(GRPCTimeout.encode(nanoseconds: 1_000_000_001) == "1000001u")
    for n: UInt64 in [1, 999, 123_456_789, 3_000_000_000, 86_400_000_000_000] {
        let parsed = GRPCTimeout.parse(GRPCTimeout.encode(nanoseconds: n))!
        #expect(parsed >= n)
    }
}

@Test func grpcMessagePercentEncoding() {
    #expect(GRPCMessageEncoding.encode("ok") == "ok")
    #expect(GRPCMessageEncoding.encode("100%\n") == "100%25%0A")
    #expect(GRPCMessageEncoding.encode("é") == "%C3%A9")
    for s in ["", "plain", "a%b", "tab\there", "日本語", "%zz"] {
        #expect(GRPCMessageEncoding.decode(GRPCMessageEncoding.encode(s)) == s)
    }
    #expect(GRPCMessageEncoding.decode("%zz%4") == "%zz%4")  // malformed escapes are kept
}


@Test func responsesOfEverySizeArriveWholeWhetherWrittenAtOnceOrThroughFlowControl() throws {
    let server = GRPCServerConnection(knownPaths: [statusPath])
    let client = GRPCClientConnection()
    // One frame (written at once), over one frame, and over the 65,535-byte initial window (flow-controlled).
    for size in [0, 40, 16_379, 16_380, 20_000, 200_000] {
        let id = try #require(client.startCall(path: statusPath, message: [1], timeoutNanos: nil))
        let request = try #require(calls(pump(client, server).server).first)
        let message = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(server.respond(streamID: request.streamID, message: message))
        #expect(responses(pump(client, server).client)[id] == GRPCResponse(status: .ok, message: message), "size \(size)")
    }
    #expect(server.inFlightCount == 0 && server.http2.openStreamCount == 0)
}
