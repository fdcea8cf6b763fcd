// A small unary gRPC client over a client-role HTTP/2 connection (kekctl's probes and the benchmark's load).
import GRPCCodes
import HPACK
import HTTP2

public struct GRPCResponse: Sendable, Equatable {
    public var status: GRPCStatus
    /// The response message when the status is OK.
    public var message: [UInt8]?
}

public enum GRPCClientEvent: Sendable {
    case response(streamID: UInt32, GRPCResponse)
    case connectionError(reason: String)
}

public final class GRPCClientConnection {
    public let http2: HTTP2Connection
    private let authority: String
    private let maxReceiveMessageSize: Int

    private struct Call {
        var sawHeaders = false
        var reader: MessageReader
    }
    private var calls = StreamIDMap<Call>()
    /// The last call's request headers: the same path and timeout (the benchmark's load, a probe's retries) reuse
    /// the list, which the HPACK encoder then recognises field by field without hashing.
    private var lastRequest: (path: String, timeoutNanos: UInt64?, fields: [HeaderField])?

    public init(authority: String = "localhost", maxReceiveMessageSize: Int = 4 << 20, limits: HTTP2Limits = .init()) {
        self.authority = authority
        self.maxReceiveMessageSize = maxReceiveMessageSize
        self.http2 = HTTP2Connection(role: .client, limits: limits)
    }

    public var openCalls: Int { calls.count }

    /// Queues a unary call; nil when the connection can open no more streams.
    public func startCall(path: String, message: [UInt8], timeoutNanos: UInt64? = nil) -> UInt32? {
        guard let streamID = http2.openStream() else { return nil }
        let fields: [HeaderField]
        if let last = lastRequest, last.path == path, last.timeoutNanos == timeoutNanos {
            fields = last.fields
        } else {
            fields = requestHeaders(path: path, timeoutNanos: timeoutNanos)
            lastRequest = (path, timeoutNanos, fields)
        }
        calls[streamID] = Call(reader: MessageReader(maxMessageSize: maxReceiveMessageSize))
        http2.sendHeaders(streamID: streamID, fields: fields, endStream: false)
        http2.sendData(streamID: streamID, bytes: MessageFraming.frame(message), endStream: true)
        return streamID
    }

    private func requestHeaders(path: String, timeoutNanos: UInt64?) -> [HeaderField] {
        var fields = [
            HeaderField(name: ":method", value: "POST"),
            HeaderField(name: ":scheme", value: "http"),
            HeaderField(name: ":path", value: path),
            HeaderField(name: ":authority", value: authority),
            HeaderField(name: "content-type", value: "application/grpc"),
            HeaderField(name: "user-agent", value: "kekctl"),
            HeaderField(name: "te", value: "trailers"),
        ]
        if let timeoutNanos { fields.append(HeaderField(name: "grpc-timeout", value: GRPCTimeout.encode(nanoseconds: timeoutNanos))) }
        return fields
    }

    public func receive(_ bytes: ArraySlice<UInt8>) -> [GRPCClientEvent] {
        var out: [GRPCClientEvent] = []
        for event in http2.receive(bytes) {
            switch event {
            // The call's state is changed in place (the map's `_modify`), never copied out and written back.
            case let .headers(streamID, fields, endStream):
                guard let sawHeaders = calls[streamID]?.sawHeaders else { continue }
                if !sawHeaders {
                    calls[streamID]?.sawHeaders = true
                    let status = fields.first { $0.name == ":status" }?.value
                    if status != "200" {
                        complete(streamID, GRPCResponse(status: GRPCStatus(.internalError, "HTTP status \(status ?? "missing")"), message: nil), into: &out)
                        continue
                    }
                }
                if endStream, let call = calls.removeValue(forKey: streamID) {
                    out.append(.response(streamID: streamID, Self.result(trailers: fields, reader: call.reader)))
                }
            case let .data(streamID, bytes, endStream):
                guard calls.contains(streamID) else { continue }
                do {
                    try calls[streamID]?.reader.append(bytes)
                } catch {
                    http2.resetStream(streamID: streamID, code: .cancel)
                    complete(streamID, GRPCResponse(status: GRPCStatus(.resourceExhausted, "response message rejected: \(error)"), message: nil), into: &out)
                    continue
                }
                if endStream {
                    complete(streamID, GRPCResponse(status: GRPCStatus(.internalError, "stream ended without trailers"), message: nil), into: &out)
                }
            case let .streamReset(streamID, code), let .streamError(streamID, code, _):
                if calls[streamID] != nil {
                    complete(streamID, GRPCResponse(status: GRPCStatus(.unavailable, "stream reset (\(code))"), message: nil), into: &out)
                }
            case let .connectionError(_, reason):
                out.append(.connectionError(reason: reason))
            case let .goAwayReceived(lastStreamID, _):
                for id in calls.ids.sorted() where id > lastStreamID {
                    complete(id, GRPCResponse(status: GRPCStatus(.unavailable, "server is shutting down"), message: nil), into: &out)
                }
            default:
                break
            }
        }
        return out
    }

    private func complete(_ streamID: UInt32, _ response: GRPCResponse, into out: inout [GRPCClientEvent]) {
        calls.removeValue(forKey: streamID)
        out.append(.response(streamID: streamID, response))
    }

    private static func result(trailers: [HeaderField], reader: MessageReader) -> GRPCResponse {
        guard let raw = trailers.first(where: { $0.name == "grpc-status" })?.value, let n = Int(raw),
              let code = GRPCStatusCode(rawValue: n) else {
            return GRPCResponse(status: GRPCStatus(.internalError, "missing or invalid grpc-status"), message: nil)
        }
        let message = trailers.first { $0.name == "grpc-message" }.map { GRPCMessageEncoding.decode($0.value) } ?? ""
        guard code == .ok else { return GRPCResponse(status: GRPCStatus(code, message), message: nil) }
        guard reader.messages.count == 1, reader.pendingBytes == 0 else {
            return GRPCResponse(status: GRPCStatus(.internalError, "expected one response message, got \(reader.messages.count)"), message: nil)
        }
        return GRPCResponse(status: .ok, message: reader.messages[0])
    }
}
