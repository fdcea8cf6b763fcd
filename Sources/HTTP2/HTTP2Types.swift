// HTTP/2 (RFC 9113) public vocabulary: error codes, settings, limits and the events a connection reports.
import HPACK

/// RFC 9113 §7 error codes. Unknown codes received from a peer are mapped to `.internalError` (§7 allows this).
public enum HTTP2ErrorCode: UInt32, Sendable {
    case noError = 0, protocolError, internalError, flowControlError,
         settingsTimeout, streamClosed, frameSizeError, refusedStream, cancel, compressionError, connectError,
         enhanceYourCalm, inadequateSecurity, http11Required

    /// Maps a wire value; codes this implementation does not know are treated as INTERNAL_ERROR.
    public init(wireValue: UInt32) { self = HTTP2ErrorCode(rawValue: wireValue) ?? .internalError }
}

/// One SETTINGS parameter (RFC 9113 §6.5.1). Unknown identifiers are carried through the codec and ignored.
public struct HTTP2Setting: Equatable, Hashable, Sendable {
    public var id: UInt16
    public var value: UInt32
    public init(id: UInt16, value: UInt32) { self.id = id; self.value = value }

    public static let headerTableSize: UInt16 = 0x1
    public static let enablePush: UInt16 = 0x2
    public static let maxConcurrentStreams: UInt16 = 0x3
    public static let initialWindowSize: UInt16 = 0x4
    public static let maxFrameSize: UInt16 = 0x5
    public static let maxHeaderListSize: UInt16 = 0x6
}

/// RFC 9113 constants used across the target.
public enum HTTP2Constants {
    /// The client connection preface (§3.4).
    public static let clientPreface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// Default and our fixed SETTINGS_MAX_FRAME_SIZE. We never send or accept larger frames (grpc-go reads ≤ 16 KiB).
    public static let defaultMaxFrameSize = 16384
    /// Initial flow-control window for both directions before SETTINGS/WINDOW_UPDATE change it (§6.9.2).
    public static let defaultWindowSize = 65535
    /// Largest legal flow-control window (§6.9.1).
    public static let maxWindowSize = Int(Int32.max)
    /// Largest frame length a peer may ever advertise (§6.5.2).
    public static let maxAllowedFrameSize = (1 << 24) - 1
    /// Frame header length.
    public static let frameHeaderLength = 9
}

/// Resource limits and abuse budgets for one connection. Defaults are the server's.
public struct HTTP2Limits: Sendable {
    /// Advertised SETTINGS_MAX_CONCURRENT_STREAMS: peer streams beyond it are refused with RST_STREAM(REFUSED_STREAM).
    public var maxConcurrentStreams: Int = 128
    /// Advertised SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 size: name + value + 32 per field). A larger decoded
    /// header list is rejected by the HPACK decoder.
    public var maxHeaderListSize: Int = 16384
    /// CONTINUATION frames allowed after one HEADERS frame; more → GOAWAY(ENHANCE_YOUR_CALM) (CONTINUATION flood).
    public var maxContinuationFrames: Int = 16
    /// Largest compressed header block (HEADERS + CONTINUATION payloads, padding excluded) buffered before decoding;
    /// more → GOAWAY(ENHANCE_YOUR_CALM). Must be at least a frame's worth so ordinary headers fit.
    public var maxHeaderBlockBytes: Int = 65536
    /// Our per-stream receive window, advertised as SETTINGS_INITIAL_WINDOW_SIZE.
    public var initialWindowSize: Int = 1 << 20
    /// Our connection receive window: raised from 65535 by a WINDOW_UPDATE right after our SETTINGS.
    public var connectionWindowSize: Int = 1 << 24
    /// Advertised SETTINGS_HEADER_TABLE_SIZE (our HPACK decoder's dynamic table).
    public var headerTableSize: Int = 4096
    /// Largest dynamic table our HPACK encoder uses, whatever larger size the peer allows (bounds memory).
    public var maxEncoderTableSize: Int = 4096
    /// Outgoing DATA bytes allowed to wait for the peer's flow-control windows; beyond → GOAWAY(ENHANCE_YOUR_CALM)
    /// (a peer that never grants window would otherwise make us hold responses forever).
    public var maxQueuedOutputBytes: Int = 4 << 20
    /// Rapid reset (CVE-2023-44487): among the last `rapidResetWindow` streams the peer opened, at most this many
    /// may be reset by the peer before we started answering; one more → GOAWAY(ENHANCE_YOUR_CALM).
    public var maxResetsPerWindow: Int = 200
    /// The sliding count of peer-opened streams `maxResetsPerWindow` applies to.
    public var rapidResetWindow: Int = 1000
    /// When the owner passes times (`receive(_:now:)`), only resets arriving within this many nanoseconds of the
    /// stream's opening count as rapid: a client cancelling at its deadline (seconds, e.g. while a KMS backend is
    /// down) is then not mistaken for the attack. Without times every reset before an answer counts.
    public var rapidResetMaxStreamAgeNanos: UInt64 = 500_000_000
    /// Control frames we queue in answer to the peer (PING ACK, SETTINGS ACK, RST_STREAM for its errors or refused
    /// streams) that may sit in our output before `takeOutput()` takes them; more → GOAWAY(ENHANCE_YOUR_CALM)
    /// (PING/SETTINGS/RST floods against a peer that does not read, CVE-2019-9512/9515).
    public var maxQueuedControlFrames: Int = 1000
    /// Consecutive frames that carry no progress (empty DATA without END_STREAM, empty CONTINUATION/HEADERS
    /// fragments without END_HEADERS, unknown frame types, PRIORITY); more → GOAWAY(ENHANCE_YOUR_CALM)
    /// (CVE-2019-9518). Any DATA with payload or any new stream resets the count.
    public var maxConsecutiveEmptyFrames: Int = 100
    /// Flow-control credit policy for received DATA. false: credit goes back as DATA arrives (fine for a client
    /// reading responses). true: credit goes back only as the owner consumes payload (`consume(streamID:bytes:)`)
    /// or the stream goes away, so the windows bound what the owner buffers: the stream window restores up to
    /// `initialWindowSize` minus what the stream still holds, the connection window up to `connectionWindowSize`
    /// minus what all streams hold; `allowReceiving(streamID:bytes:)` lets one stream past its window (e.g. for the
    /// rest of a message whose length was declared).
    public var creditOnConsumption = false
    /// A peer-opened stream whose remote side has not ended this many nanoseconds after it opened is reset with
    /// CANCEL by `expireIncompleteStreams(now:)`, so half-open streams cannot hold a connection (0 = never). Times
    /// are the owner's clock as passed to `receive(_:now:)`.
    public var requestTimeoutNanos: UInt64 = 0

    public init() {}
}

/// What a connection reports to its owner after consuming input.
public enum HTTP2Event: Sendable, Equatable {
    /// Request headers (server role), response headers (client role), or trailers (`endStream` is then true).
    case headers(streamID: UInt32, fields: [HeaderField], endStream: Bool)
    /// Stream payload. Flow-control credit is returned as it arrives, or with `creditOnConsumption` as the owner
    /// consumes it.
    case data(streamID: UInt32, bytes: [UInt8], endStream: Bool)
    /// The peer sent RST_STREAM; the stream is gone.
    case streamReset(streamID: UInt32, code: HTTP2ErrorCode)
    /// We sent RST_STREAM for a stream error; the stream is gone. May name a stream never reported by `.headers`
    /// (e.g. a refused or malformed new stream).
    case streamError(streamID: UInt32, code: HTTP2ErrorCode, reason: String)
    /// The peer sent GOAWAY. In the client role, our streams above `lastStreamID` are then reported as
    /// `.streamReset(code: .refusedStream)` (they were not processed and may be retried elsewhere).
    case goAwayReceived(lastStreamID: UInt32, code: HTTP2ErrorCode)
    /// We queued GOAWAY for a connection error: flush output, then close. Further input is ignored.
    case connectionError(code: HTTP2ErrorCode, reason: String)
    /// The answer to one of our PINGs.
    case pingAck(opaque: UInt64)
    /// The peer acknowledged our SETTINGS.
    case settingsAcked
}
