// Unary gRPC on top of one server-role HTTP/2 connection: validates requests, reassembles the request message,
// and writes responses or errors. Pure like the HTTP2 layer: the caller owns the socket and serialises access.
import GRPCCodes
import HPACK
import HTTP2

public struct GRPCServerLimits: Sendable {
    /// Largest request message accepted; beyond it the call fails with RESOURCE_EXHAUSTED.
    public var maxReceiveMessageSize: Int = 4 << 20
    /// Request bytes one connection may hold for requests not yet handed to a call (a message still arriving, or
    /// a complete one whose stream has not ended). Flow-control credit goes back only as requests are handed over
    /// or dropped (`HTTP2Limits.creditOnConsumption`), the connection window is this plus one frame, and each stream
    /// gets credit for the rest of a declared message; a stream whose DATA would take the connection past the limit
    /// is refused (RESOURCE_EXHAUSTED, then RST_STREAM(ENHANCE_YOUR_CALM)), which frees room for the others. At
    /// least `maxReceiveMessageSize + 5`, so one message of the largest size always fits.
    public var maxBufferedRequestBytesPerConnection: Int = 16 << 20
    /// A stream's request must be complete (END_STREAM) this many nanoseconds after its HEADERS, or the stream is
    /// reset with CANCEL, so half-open streams cannot hold a connection forever (0 = never).
    public var requestTimeoutNanos: UInt64 = 30_000_000_000
    /// `creditOnConsumption`, `connectionWindowSize` and `requestTimeoutNanos` are set from the fields above.
    public var http2 = HTTP2Limits()
    public init() {}
}

/// Request bytes held by all connections of a server together (a server-wide cap). Shared across threads.
public protocol RequestBufferBudget: AnyObject, Sendable {
    /// Takes `bytes` from the budget, or returns false and takes nothing when that would exceed it.
    func reserve(_ bytes: Int) -> Bool
    func release(_ bytes: Int)
    var limit: Int { get }
}

/// A complete unary request, ready for a service.
public struct GRPCRequest: Sendable {
    public var streamID: UInt32
    public var path: String
    /// The client's deadline relative to the request's arrival (grpc-timeout), in nanoseconds.
    public var timeoutNanos: UInt64?
    /// The bytes the message arrived in and where it starts in them: the usual request is the DATA payload after its
    /// 5-byte prefix, decoded without a copy. (An array and an offset, not a slice: a slice would make every event
    /// carrying a request a larger value, copied through its type's value witnesses.)
    private let storage: [UInt8]
    private let messageStart: Int

    public var message: ArraySlice<UInt8> { storage[messageStart...] }

    public init(streamID: UInt32, path: String, message: [UInt8], timeoutNanos: UInt64?) {
        self.init(streamID: streamID, path: path, storage: message, messageStart: 0, timeoutNanos: timeoutNanos)
    }

    init(streamID: UInt32, path: String, storage: [UInt8], messageStart: Int, timeoutNanos: UInt64?) {
        self.streamID = streamID
        self.path = path
        self.storage = storage
        self.messageStart = messageStart
        self.timeoutNanos = timeoutNanos
    }
}

public enum GRPCServerEvent: Sendable {
    case call(GRPCRequest)
    /// This layer already answered the stream with an error; nothing reached a service.
    case rejected(streamID: UInt32, path: String, status: GRPCStatus)
    /// The peer reset a stream whose call was handed out; its response will be dropped.
    case cancelled(streamID: UInt32)
    /// An HTTP/2 violation that cost a stream (RST_STREAM sent) — for metrics.
    case streamProtocolError(kind: ProtocolErrorKind, reason: String)
    /// The connection is finished (GOAWAY queued on a violation): flush the output, then close.
    case connectionError(kind: ProtocolErrorKind, reason: String)
    case peerGoAway
}

public final class GRPCServerConnection {
    public let http2: HTTP2Connection
    public let limits: GRPCServerLimits
    /// Compared in turn: cheaper than hashing into a set of a few paths.
    private let knownPaths: [String]
    /// The last accepted path and content-type: a client's repeated requests send them as the same HPACK table
    /// entries, whose strings share storage with these, so the usual request's checks compare identical strings.
    private var lastKnownPath: String?
    private var lastGRPCContentType: String?

    private struct PendingRequest {
        var path: String
        /// Created by the first DATA that does not hold the whole request (most requests never need one).
        var reader: MessageReader?
        var timeoutNanos: UInt64?
        /// DATA payload received on the stream (credited back to the peer when the request is handed over).
        var receivedBytes = 0
        /// Of those, the bytes held while the request is incomplete, counted against the buffer limits.
        var heldBytes = 0
    }
    /// Streams whose request is still arriving.
    private var receiving = StreamIDMap<PendingRequest>()
    /// Streams handed to a service and not yet answered.
    private var inFlight = StreamIDMap<Void>()
    /// The framed response being written (reused; only buffers up to `responseScratchKept` bytes are kept).
    private var responseScratch: [UInt8] = []
    private static let responseScratchKept = 64 * 1024

    private let budget: RequestBufferBudget?
    /// Sum of `heldBytes` over the requests still arriving.
    public private(set) var bufferedRequestBytes = 0

    /// `budget`, when given, is the server-wide cap shared with the other connections.
    public init(knownPaths: Set<String>, limits: GRPCServerLimits = .init(), budget: RequestBufferBudget? = nil) {
        self.knownPaths = Array(knownPaths)
        self.limits = limits
        self.budget = budget
        var http2Limits = limits.http2
        http2Limits.creditOnConsumption = true
        // One frame above the limit, so a client can always send the frame that crosses it rather than stall.
        http2Limits.connectionWindowSize = min(max(limits.maxBufferedRequestBytesPerConnection, 0)
                                                   + HTTP2Constants.defaultMaxFrameSize, HTTP2Constants.maxWindowSize)
        http2Limits.requestTimeoutNanos = limits.requestTimeoutNanos
        self.http2 = HTTP2Connection(role: .server, limits: http2Limits)
    }

    deinit { releaseBufferedRequests() }

    public var inFlightCount: Int { inFlight.count }

    /// Gives back to the server-wide budget what requests still arriving hold; call when the connection ends.
    public func releaseBufferedRequests() {
        for streamID in receiving.ids { forget(streamID) }
    }

    /// When the oldest request still arriving runs out of time (`requestTimeoutNanos`), on the clock passed to
    /// `receive`.
    public var nextRequestDeadline: UInt64? { http2.nextRequestDeadline }

    /// Resets (RST_STREAM CANCEL) the streams whose request is not complete within `requestTimeoutNanos`.
    public func expireIncompleteRequests(now: UInt64) -> [GRPCServerEvent] {
        var out: [GRPCServerEvent] = []
        for case let .streamError(streamID, _, reason) in http2.expireIncompleteStreams(now: now) {
            forget(streamID)
            out.append(.streamProtocolError(kind: .requestTimeout, reason: reason))
        }
        return out
    }

    /// Stops tracking a request that is still arriving and releases what it held.
    @discardableResult
    private func forget(_ streamID: UInt32, if condition: (PendingRequest) -> Bool = { _ in true }) -> PendingRequest? {
        guard let pending = receiving.removeValue(forKey: streamID, if: condition) else { return nil }
        if pending.heldBytes > 0 {
            bufferedRequestBytes -= pending.heldBytes
            budget?.release(pending.heldBytes)
        }
        return pending
    }

    /// `now` is a monotonic clock in nanoseconds: the HTTP/2 layer uses it to tell a rapid-reset attack from a
    /// client cancelling calls at their deadline.
    public func receive(_ bytes: ArraySlice<UInt8>, now: UInt64? = nil) -> [GRPCServerEvent] {
        let events = now.map { http2.receive(bytes, now: $0) } ?? http2.receive(bytes)
        var out: [GRPCServerEvent] = []
        out.reserveCapacity(events.count)   // usually fewer: one call per HEADERS + DATA pair
        for event in events {
            switch event {
            case let .headers(streamID, fields, endStream):
                onHeaders(streamID: streamID, fields: fields, endStream: endStream, into: &out)
            case let .data(streamID, bytes, endStream):
                onData(streamID: streamID, bytes: bytes, endStream: endStream, into: &out)
            case let .streamReset(streamID, _):
                forget(streamID)
                if inFlight.removeValue(forKey: streamID) != nil { out.append(.cancelled(streamID: streamID)) }
            case let .streamError(streamID, code, reason):
                forget(streamID)
                if inFlight.removeValue(forKey: streamID) != nil { out.append(.cancelled(streamID: streamID)) }
                out.append(.streamProtocolError(kind: ProtocolErrorKind(code), reason: reason))
            case .goAwayReceived:
                out.append(.peerGoAway)
            case let .connectionError(code, reason):
                releaseBufferedRequests()
                inFlight.removeAll()
                out.append(.connectionError(kind: ProtocolErrorKind(code), reason: reason))
            default:
                break
            }
        }
        return out
    }

    /// Sends a successful response. Returns false when the stream is gone (the client cancelled it).
    @discardableResult
    public func respond(streamID: UInt32, message: [UInt8]) -> Bool {
        guard inFlight.removeValue(forKey: streamID) != nil else { return false }
        // Framed into a buffer kept for it: the HTTP/2 layer copies it into its output.
        responseScratch.removeAll(keepingCapacity: true)
        MessageFraming.frame(message, into: &responseScratch)
        http2.sendResponse(streamID: streamID, headers: Self.responseHeaderBlock, data: responseScratch[...],
                           trailers: Self.okTrailerBlock)
        if responseScratch.capacity > Self.responseScratchKept { responseScratch = [] }  // a large answer's buffer is not kept
        return true
    }

    /// Answers an in-flight call with an error status (Trailers-Only). Returns false when the stream is gone.
    @discardableResult
    public func fail(streamID: UInt32, status: GRPCStatus) -> Bool {
        guard inFlight.removeValue(forKey: streamID) != nil else { return false }
        http2.sendHeaders(streamID: streamID, fields: Self.trailersOnly(status), endStream: true)
        return true
    }

    // MARK: - Request assembly

    private func onHeaders(streamID: UInt32, fields: [HeaderField], endStream: Bool, into out: inout [GRPCServerEvent]) {
        if receiving.contains(streamID) {
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
        // By index, not `for field in fields`: the iterator would copy (retain and release) every name and value.
        for index in fields.indices {
            // The HTTP/2 layer classified the names (once per distinct field); only other names are compared here.
            switch FieldClass(fields[index]).name {
            case .method: method = fields[index].value
            case .path: path = fields[index].value
            case .contentType: contentType = fields[index].value
            case .other:
                switch fields[index].name.utf8.count {
                case 12 where fields[index].name == "grpc-timeout": timeout = fields[index].value
                case 13 where fields[index].name == "grpc-encoding": encoding = fields[index].value
                default: break
                }
            default: break
            }
        }
        guard method == "POST" else {
            rejectHTTP(streamID, status: "405", path: path, GRPCStatus(.unimplemented, "method \(method) not allowed; gRPC uses POST"), requestEnded: endStream, into: &out)
            return
        }
        guard contentType == lastGRPCContentType || contentType == "application/grpc"
                || contentType.hasPrefix("application/grpc+") || contentType.hasPrefix("application/grpc;") else {
            rejectHTTP(streamID, status: "415", path: path, GRPCStatus(.internalError, "content-type \(contentType) is not gRPC"), requestEnded: endStream, into: &out)
            return
        }
        lastGRPCContentType = contentType
        guard path == lastKnownPath || knownPaths.contains(path) else {
            reject(streamID, path: path, GRPCStatus(.unimplemented, "unknown method \(path)"), requestEnded: endStream, into: &out)
            return
        }
        lastKnownPath = path
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
        receiving[streamID] = PendingRequest(path: path, reader: nil, timeoutNanos: timeoutNanos)
        if endStream { finish(streamID: streamID, into: &out) }
    }

    private func onData(streamID: UInt32, bytes: [UInt8], endStream: Bool, into out: inout [GRPCServerEvent]) {
        if endStream, MessageReader.isWholeMessage(bytes, maxMessageSize: limits.maxReceiveMessageSize),
           let pending = forget(streamID, if: { $0.reader?.isEmpty ?? true }) {
            // The usual unary request: the whole message in the DATA frame that ends the stream.
            http2.consume(streamID: streamID, bytes: pending.receivedBytes + bytes.count)
            handOver(streamID, pending, storage: bytes, messageStart: MessageFraming.prefixSize, into: &out)
            return
        }
        guard let path = receiving[streamID]?.path else {
            // A stream we already answered: drop the rest and give its credit back.
            http2.consume(streamID: streamID, bytes: bytes.count)
            return
        }
        // The entry is updated in place (`receiving[streamID]!`): a copy would make every append copy the buffer.
        receiving[streamID]!.receivedBytes += bytes.count
        if !endStream && !bytes.isEmpty {
            // These bytes wait for more DATA: count them against both caps before keeping them.
            let perConnection = limits.maxBufferedRequestBytesPerConnection
            if bufferedRequestBytes + bytes.count > perConnection {
                refuseOverBufferLimit(streamID, path: path, kind: .requestBufferLimit,
                                      "request bytes buffered on this connection would exceed \(perConnection) bytes",
                                      into: &out)
                return
            }
            if let budget, !budget.reserve(bytes.count) {
                refuseOverBufferLimit(streamID, path: path, kind: .serverRequestBufferLimit,
                                      "request bytes buffered by the server would exceed \(budget.limit) bytes",
                                      into: &out)
                return
            }
            receiving[streamID]!.heldBytes += bytes.count
            bufferedRequestBytes += bytes.count
        }
        do {
            if receiving[streamID]!.reader == nil {
                receiving[streamID]!.reader = MessageReader(maxMessageSize: limits.maxReceiveMessageSize)
            }
            try receiving[streamID]!.reader!.append(bytes)
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
            reject(streamID, path: path, status, requestEnded: endStream, into: &out)
            return
        }
        guard receiving[streamID]!.reader!.messages.count <= 1 else {
            reject(streamID, path: path, GRPCStatus(.unimplemented, "more than one request message on a unary method"), requestEnded: endStream, into: &out)
            return
        }
        if endStream {
            finish(streamID: streamID, into: &out)
        } else if let missing = receiving[streamID]!.reader!.bytesToCompleteMessage {
            // Credit for the rest of a declared message (within the size limit), so it can complete even when it
            // is larger than the stream window.
            http2.allowReceiving(streamID: streamID, bytes: missing)
        }
    }

    /// A stream whose bytes would cross a buffer limit: RESOURCE_EXHAUSTED, RST_STREAM(ENHANCE_YOUR_CALM), counted.
    private func refuseOverBufferLimit(_ streamID: UInt32, path: String, kind: ProtocolErrorKind, _ reason: String,
                                       into out: inout [GRPCServerEvent]) {
        reject(streamID, path: path, GRPCStatus(.resourceExhausted, reason), requestEnded: false,
               resetCode: .enhanceYourCalm, into: &out)
        out.append(.streamProtocolError(kind: kind, reason: reason))
    }

    private func finish(streamID: UInt32, into out: inout [GRPCServerEvent]) {
        guard let pending = forget(streamID) else { return }
        // Handed over (or answered below): the request's bytes are consumed.
        http2.consume(streamID: streamID, bytes: pending.receivedBytes)
        let messages = pending.reader?.messages ?? [], pendingBytes = pending.reader?.pendingBytes ?? 0
        guard messages.count == 1, pendingBytes == 0 else {
            let why = pendingBytes > 0 ? "request ended inside a message" : "request carried no message"
            inFlight[streamID] = ()
            fail(streamID: streamID, status: GRPCStatus(.internalError, why))
            out.append(.rejected(streamID: streamID, path: pending.path, status: GRPCStatus(.internalError, why)))
            return
        }
        handOver(streamID, pending, storage: messages[0], messageStart: 0, into: &out)
    }

    private func handOver(_ streamID: UInt32, _ pending: PendingRequest, storage: [UInt8], messageStart: Int,
                          into out: inout [GRPCServerEvent]) {
        inFlight[streamID] = ()
        out.append(.call(GRPCRequest(streamID: streamID, path: pending.path, storage: storage, messageStart: messageStart,
                                     timeoutNanos: pending.timeoutNanos)))
    }

    private func reject(_ streamID: UInt32, path: String, _ status: GRPCStatus, requestEnded: Bool,
                        resetCode: HTTP2ErrorCode = .noError, into out: inout [GRPCServerEvent]) {
        forget(streamID)
        http2.sendHeaders(streamID: streamID, fields: Self.trailersOnly(status), endStream: true)
        // Early server closure: tell the client to stop sending the rest of the request.
        if !requestEnded { http2.resetStream(streamID: streamID, code: resetCode) }
        out.append(.rejected(streamID: streamID, path: path, status: status))
    }

    private func rejectHTTP(_ streamID: UInt32, status httpStatus: String, path: String, _ status: GRPCStatus, requestEnded: Bool, into out: inout [GRPCServerEvent]) {
        forget(streamID)
        http2.sendHeaders(streamID: streamID, fields: [HeaderField(name: ":status", value: httpStatus)], endStream: true)
        if !requestEnded { http2.resetStream(streamID: streamID, code: .noError) }
        out.append(.rejected(streamID: streamID, path: path, status: status))
    }

    static let responseHeaders = [HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc")]
    static let okTrailers = [HeaderField(name: "grpc-status", value: "0")]
    static let responseHeaderBlock = PreEncodedHeaders(responseHeaders)
    static let okTrailerBlock = PreEncodedHeaders(okTrailers)

    static func trailersOnly(_ status: GRPCStatus) -> [HeaderField] {
        var fields = responseHeaders
        fields.append(HeaderField(name: "grpc-status", value: String(status.code.rawValue)))
        if !status.message.isEmpty {
            fields.append(HeaderField(name: "grpc-message", value: GRPCMessageEncoding.encode(status.message)))
        }
        return fields
    }
}
