// Unary gRPC on top of one server-role HTTP/2 connection: validates requests, reassembles the request message,
// and writes responses or errors. Pure like the HTTP2 layer: the caller owns the socket and serialises access.
import HPACK
import HTTP2

public struct GRPCServerLimits: Sendable {
    /// Largest request message accepted; beyond it the call fails with RESOURCE_EXHAUSTED.
    public var maxReceiveMessageSize: Int = 4 << 20
    public var http2 = HTTP2Limits()
    public init() {}
}

/// A complete unary request, ready for a service.
public struct GRPCRequest: Sendable {
    public var streamID: UInt32
    public var path: String
    public var message: [UInt8]
    /// The client's deadline relative to the request's arrival (grpc-timeout), in nanoseconds.
    public var timeoutNanos: UInt64?
}

public enum GRPCServerEvent: Sendable {
    case call(GRPCRequest)
    /// This layer already answered the stream with an error; nothing reached a service.
    case rejected(streamID: UInt32, path: String, status: GRPCStatus)
    /// The peer reset a stream whose call was handed out; its response will be dropped.
    case cancelled(streamID: UInt32)
    /// An HTTP/2 violation that cost a stream (RST_STREAM sent) — for metrics.
    case streamProtocolError(kind: String, reason: String)
    /// The connection is finished (GOAWAY queued on a violation): flush the output, then close.
    case connectionError(kind: String, reason: String)
    case peerGoAway
}

public final class GRPCServerConnection {
    public let http2: HTTP2Connection
    public let limits: GRPCServerLimits
    private let knownPaths: Set<String>

    private struct PendingRequest {
        var path: String
        var reader: MessageReader
        var timeoutNanos: UInt64?
    }
    /// Streams whose request is still arriving.
    private var receiving: [UInt32: PendingRequest] = [:]
    /// Streams handed to a service and not yet answered.
    private var inFlight: Set<UInt32> = []

    public init(knownPaths: Set<String>, limits: GRPCServerLimits = .init()) {
        self.knownPaths = knownPaths
        self.limits = limits
        self.http2 = HTTP2Connection(role: .server, limits: limits.http2)
    }

    public var inFlightCount: Int { inFlight.count }

    /// `now` is a monotonic clock in nanoseconds: the HTTP/2 layer uses it to tell a rapid-reset attack from a
    /// client cancelling calls at their deadline.
    public func receive(_ bytes: ArraySlice<UInt8>, now: UInt64? = nil) -> [GRPCServerEvent] {
        var out: [GRPCServerEvent] = []
        let events = now.map { http2.receive(bytes, now: $0) } ?? http2.receive(bytes)
        for event in events {
            switch event {
            case let .headers(streamID, fields, endStream):
                onHeaders(streamID: streamID, fields: fields, endStream: endStream, into: &out)
            case let .data(streamID, bytes, endStream):
                onData(streamID: streamID, bytes: bytes, endStream: endStream, into: &out)
            case let .streamReset(streamID, _):
                receiving.removeValue(forKey: streamID)
                if inFlight.remove(streamID) != nil { out.append(.cancelled(streamID: streamID)) }
            case let .streamError(streamID, code, reason):
                receiving.removeValue(forKey: streamID)
                if inFlight.remove(streamID) != nil { out.append(.cancelled(streamID: streamID)) }
                out.append(.streamProtocolError(kind: "\(code)", reason: reason))
            case .goAwayReceived:
                out.append(.peerGoAway)
            case let .connectionError(code, reason):
                receiving.removeAll()
                inFlight.removeAll()
                out.append(.connectionError(kind: "\(code)", reason: reason))
            default:
                break
            }
        }
        return out
    }

    /// Sends a successful response. Returns false when the stream is gone (the client cancelled it).
    @discardableResult
    public func respond(streamID: UInt32, message: [UInt8]) -> Bool {
        guard inFlight.remove(streamID) != nil else { return false }
        http2.sendHeaders(streamID: streamID, fields: Self.responseHeaders, endStream: false)
        http2.sendData(streamID: streamID, bytes: MessageFraming.frame(message), endStream: false)
        http2.sendHeaders(streamID: streamID, fields: Self.okTrailers, endStream: true)
        return true
    }

    /// Answers an in-flight call with an error status (Trailers-Only). Returns false when the stream is gone.
    @discardableResult
    public func fail(streamID: UInt32, status: GRPCStatus) -> Bool {
        guard inFlight.remove(streamID) != nil else { return false }
        http2.sendHeaders(streamID: streamID, fields: Self.trailersOnly(status), endStream: true)
        return true
    }

    // MARK: - Request assembly

    private func onHeaders(streamID: UInt32, fields: [HeaderField], endStream: Bool, into out: inout [GRPCServerEvent]) {
        if receiving[streamID] != nil {
            // Trailers from the client: only legal as the end of the request.
            guard endStream else {
                reject(streamID, path: receiving[streamID]!.path, GRPCStatus(.internalError, "unexpected HEADERS in the middle of a request"), requestEnded: false, into: &out)
                return
            }
            finish(streamID: streamID, into: &out)
            return
        }
        if inFlight.contains(streamID) { return }  // trailers after the request was complete: nothing to do

        var method = "", path = "", contentType = "", encoding: String? = nil, timeout: String? = nil
        for field in fields {
            switch field.name {
            case ":method": method = field.value
            case ":path": path = field.value
            case "content-type": contentType = field.value
            case "grpc-encoding": encoding = field.value
            case "grpc-timeout": timeout = field.value
            default: break
            }
        }
        guard method == "POST" else {
            rejectHTTP(streamID, status: "405", path: path, GRPCStatus(.unimplemented, "method \(method) not allowed; gRPC uses POST"), requestEnded: endStream, into: &out)
            return
        }
        guard contentType == "application/grpc" || contentType.hasPrefix("application/grpc+") || contentType.hasPrefix("application/grpc;") else {
            rejectHTTP(streamID, status: "415", path: path, GRPCStatus(.internalError, "content-type \(contentType) is not gRPC"), requestEnded: endStream, into: &out)
            return
        }
        guard knownPaths.contains(path) else {
            reject(streamID, path: path, GRPCStatus(.unimplemented, "unknown method \(path)"), requestEnded: endStream, into: &out)
            return
        }
        if let encoding, encoding != "identity" {
            reject(streamID, path: path, GRPCStatus(.unimplemented, "grpc-encoding \(encoding) is not supported; send uncompressed messages"), requestEnded: endStream, into: &out)
            return
        }
        var timeoutNanos: UInt64? = nil
        if let timeout {
            guard let parsed = GRPCTimeout.parse(timeout) else {
                reject(streamID, path: path, GRPCStatus(.internalError, "malformed grpc-timeout"), requestEnded: endStream, into: &out)
                return
            }
            timeoutNanos = parsed
        }
        receiving[streamID] = PendingRequest(path: path, reader: MessageReader(maxMessageSize: limits.maxReceiveMessageSize), timeoutNanos: timeoutNanos)
        if endStream { finish(streamID: streamID, into: &out) }
    }

    private func onData(streamID: UInt32, bytes: [UInt8], endStream: Bool, into out: inout [GRPCServerEvent]) {
        guard var pending = receiving[streamID] else { return }  // a stream we already answered: drop the rest
        do {
            try pending.reader.append(bytes)
        } catch {
            let status: GRPCStatus
            switch error {
            case let .tooLarge(length, limit):
                status = GRPCStatus(.resourceExhausted, "request message of \(length) bytes exceeds the limit of \(limit) bytes")
            case .compressedNotSupported:
                status = GRPCStatus(.unimplemented, "compressed messages are not supported")
            case let .invalidFlag(flag):
                status = GRPCStatus(.internalError, "invalid message flag \(flag)")
            }
            reject(streamID, path: pending.path, status, requestEnded: endStream, into: &out)
            return
        }
        guard pending.reader.messages.count <= 1 else {
            reject(streamID, path: pending.path, GRPCStatus(.unimplemented, "more than one request message on a unary method"), requestEnded: endStream, into: &out)
            return
        }
        receiving[streamID] = pending
        if endStream { finish(streamID: streamID, into: &out) }
    }

    private func finish(streamID: UInt32, into out: inout [GRPCServerEvent]) {
        guard let pending = receiving.removeValue(forKey: streamID) else { return }
        guard pending.reader.messages.count == 1, pending.reader.pendingBytes == 0 else {
            let why = pending.reader.pendingBytes > 0 ? "request ended inside a message" : "request carried no message"
            inFlight.insert(streamID)
            fail(streamID: streamID, status: GRPCStatus(.internalError, why))
            out.append(.rejected(streamID: streamID, path: pending.path, status: GRPCStatus(.internalError, why)))
            return
        }
        inFlight.insert(streamID)
        out.append(.call(GRPCRequest(streamID: streamID, path: pending.path, message: pending.reader.messages[0], timeoutNanos: pending.timeoutNanos)))
    }

    private func reject(_ streamID: UInt32, path: String, _ status: GRPCStatus, requestEnded: Bool, into out: inout [GRPCServerEvent]) {
        receiving.removeValue(forKey: streamID)
        http2.sendHeaders(streamID: streamID, fields: Self.trailersOnly(status), endStream: true)
        // Early server closure: tell the client to stop sending the rest of the request.
        if !requestEnded { http2.resetStream(streamID: streamID, code: .noError) }
        out.append(.rejected(streamID: streamID, path: path, status: status))
    }

    private func rejectHTTP(_ streamID: UInt32, status httpStatus: String, path: String, _ status: GRPCStatus, requestEnded: Bool, into out: inout [GRPCServerEvent]) {
        receiving.removeValue(forKey: streamID)
        http2.sendHeaders(streamID: streamID, fields: [HeaderField(name: ":status", value: httpStatus)], endStream: true)
        if !requestEnded { http2.resetStream(streamID: streamID, code: .noError) }
        out.append(.rejected(streamID: streamID, path: path, status: status))
    }

    static let responseHeaders = [HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc")]
    static let okTrailers = [HeaderField(name: "grpc-status", value: "0")]

    static func trailersOnly(_ status: GRPCStatus) -> [HeaderField] {
        var fields = responseHeaders
        fields.append(HeaderField(name: "grpc-status", value: String(status.code.rawValue)))
        if !status.message.isEmpty {
            fields.append(HeaderField(name: "grpc-message", value: GRPCMessageEncoding.encode(status.message)))
        }
        return fields
    }
}
