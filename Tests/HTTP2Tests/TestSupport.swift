import HPACK
@testable import HTTP2

/// Parses everything a connection wrote (frames up to 16 MiB so oversize output would still show up).
func parseFrames(_ bytes: [UInt8]) -> [Frame] {
    var reader = FrameReader(maxFrameSize: HTTP2Constants.maxAllowedFrameSize)
    reader.append(bytes[...])
    var frames: [Frame] = []
    while let frame = try? reader.nextFrame() { frames.append(frame) }
    return frames
}

/// A hand-driven peer talking to a server-role connection.
struct FakeClient {
    var encoder = HPACKEncoder()
    var decoder = HPACKDecoder()

    static let requestFields = [
        HeaderField(name: ":method", value: "POST"), HeaderField(name: ":scheme", value: "http"),
        HeaderField(name: ":path", value: "/v2.KeyManagementService/Status"),
        HeaderField(name: ":authority", value: "localhost"),
        HeaderField(name: "content-type", value: "application/grpc"), HeaderField(name: "te", value: "trailers"),
    ]

    mutating func block(_ fields: [HeaderField] = FakeClient.requestFields) -> [UInt8] {
        var out: [UInt8] = []
        encoder.encode(fields, into: &out)
        return out
    }

    mutating func headers(_ id: UInt32, _ fields: [HeaderField] = FakeClient.requestFields,
                          endStream: Bool = false) -> [UInt8] {
        Frame(streamID: id, payload: .headers(block: block(fields)[...], endStream: endStream, endHeaders: true,
                                              priority: nil, padding: nil)).serialized()
    }
}

func frameBytes(_ id: UInt32, _ payload: Frame.Payload) -> [UInt8] {
    Frame(streamID: id, payload: payload).serialized()
}

/// A server connection that has seen the preface and an empty SETTINGS; its own start-up output is discarded.
func handshakenServer(_ limits: HTTP2Limits = .init()) -> HTTP2Connection {
    let server = HTTP2Connection(role: .server, limits: limits)
    _ = server.takeOutput()
    _ = server.receive((HTTP2Constants.clientPreface + frameBytes(0, .settings([], ack: false)))[...])
    _ = server.takeOutput()
    return server
}

extension HTTP2Connection {
    func feed(_ bytes: [UInt8]) -> [HTTP2Event] { receive(bytes[...]) }
    func outputFrames() -> [Frame] { parseFrames(takeOutput()) }
}

func goAwayCode(_ frames: [Frame]) -> HTTP2ErrorCode? {
    for frame in frames { if case let .goAway(_, code, _) = frame.payload { return code } }
    return nil
}

func rstCodes(_ frames: [Frame]) -> [UInt32: HTTP2ErrorCode] {
    var codes: [UInt32: HTTP2ErrorCode] = [:]
    for frame in frames { if case let .rstStream(code) = frame.payload { codes[frame.streamID] = code } }
    return codes
}

func isConnectionError(_ events: [HTTP2Event], _ code: HTTP2ErrorCode) -> Bool {
    events.contains { if case .connectionError(code, _) = $0 { return true } else { return false } }
}

func isStreamError(_ events: [HTTP2Event], _ id: UInt32, _ code: HTTP2ErrorCode) -> Bool {
    events.contains { if case .streamError(id, code, _) = $0 { return true } else { return false } }
}
