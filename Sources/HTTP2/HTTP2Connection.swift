// The HTTP/2 connection state machine (RFC 9113): bytes in → events, calls → bytes out. No I/O, no clocks.
// Frame handlers are in HTTP2Connection+Receive.swift, the send side and flow control in HTTP2Connection+Send.swift;
// per-stream §5.1 states in HTTP2Stream.swift, the abuse budgets in AbuseBudgets.swift. Times come in with the input.
import HPACK

/// One HTTP/2 connection, server or client role. Not thread-safe: the owner serialises all calls (e.g. under its
/// connection lock); it is marked Sendable only so it can be handed between threads under that discipline.
///
/// Driving it: write `takeOutput()` to the socket right after `init` (our SETTINGS go first); for every read, call
/// `receive(_:now:)` (or `receive(_:)`), act on the events, then write `takeOutput()`. Stop reading while earlier
/// output is still unwritten, so a peer that does not read cannot make us queue answers (the control-frame budget
/// counts what sits in the output until it is taken). Close after writing the output that follows a
/// `.connectionError` (or when `didFail` turns true after a send call), or once `isDraining && openStreamCount == 0`.
public final class HTTP2Connection: @unchecked Sendable {
    public enum Role: Sendable { case server, client }

    /// How far the peer got through the opening (§3.4): the client preface (server role), then its SETTINGS.
    enum Handshake: Equatable {
        case awaitingPreface(matched: Int)
        /// The peer's first frame must be SETTINGS.
        case awaitingSettings
        case done
    }

    /// The connection's life, orthogonal to the handshake (we may start shutting down before the peer's SETTINGS).
    enum Phase: Equatable {
        case open
        /// GOAWAY sent and/or received (§6.8): streams in flight finish, no new ones start.
        case goingAway(GoAway)
        /// A connection error queued GOAWAY (§5.4.1): further input is ignored and the owner closes.
        case closed(code: HTTP2ErrorCode)
    }

    struct GoAway: Equatable {
        var sent: GoAwaySent
        /// The lowest last-stream-id the peer announced, nil if it sent no GOAWAY.
        var receivedLastStreamID: UInt32?
    }

    enum GoAwaySent: Equatable {
        case none
        /// GOAWAY(2^31-1): a warning; streams already in flight are still processed.
        case graceful
        /// GOAWAY(last processed stream): streams above `lastStreamID` are ignored.
        case final(lastStreamID: UInt32)
    }

    /// A header block whose CONTINUATION frames are still arriving.
    struct HeaderBlockInProgress {
        var streamID: UInt32
        var endStream: Bool
        var priority: PriorityInfo?
        var block: [UInt8]
        var continuationCount: Int
    }

    public let role: Role
    public let limits: HTTP2Limits

    var reader = FrameReader()
    var output: [UInt8] = []
    var headerScratch: [UInt8] = []
    var encoder: HPACKEncoder
    var decoder: HPACKDecoder

    var handshake: Handshake
    var phase = Phase.open
    /// Events raised outside `receive` (a send that overflowed `maxQueuedOutputBytes`), reported by the next call.
    var deferredEvents: [HTTP2Event] = []
    /// Events the latest `receive` reported (capped), to size the next one's array.
    var eventsPerRead = 4

    // The peer's settings that shape what we send.
    var peerMaxFrameSize = HTTP2Constants.defaultMaxFrameSize
    var peerInitialWindowSize = HTTP2Constants.defaultWindowSize
    var peerMaxConcurrentStreams = Int.max
    var unackedSettings = 0
    var ourSettingsAcked = false

    // Flow control (§6.9).
    var connectionSendWindow = HTTP2Constants.defaultWindowSize
    var connectionRecvWindow: Int
    var connectionRecvUnreturned = 0
    /// With `creditOnConsumption`: DATA payload delivered on live streams and not yet consumed (sum of `buffered`).
    var connectionBuffered = 0
    let streamWindowTarget: Int
    let connectionWindowTarget: Int
    var queuedDataBytes = 0

    // Streams.
    var streams = StreamIDMap<HTTP2Stream>()
    var sendQueue: [UInt32] = []
    var highestPeerStreamID: UInt32 = 0
    var lastProcessedPeerStreamID: UInt32 = 0
    var nextLocalStreamID: UInt32
    var closedQuietly: RecentStreamSet
    /// Streams that were open and closed lately: a new HEADERS on one is STREAM_CLOSED rather than a bad stream id.
    var recentlyClosed: RecentStreamSet
    var headerBlock: HeaderBlockInProgress?

    var budgets: AbuseBudgets

    /// Client role queues the preface + SETTINGS (+ WINDOW_UPDATE) at once; server role SETTINGS (+ WINDOW_UPDATE).
    public init(role: Role, limits: HTTP2Limits = .init()) {
        self.role = role
        self.limits = limits
        streamWindowTarget = min(max(limits.initialWindowSize, 0), HTTP2Constants.maxWindowSize)
        connectionWindowTarget = min(max(limits.connectionWindowSize, HTTP2Constants.defaultWindowSize),
                                     HTTP2Constants.maxWindowSize)
        connectionRecvWindow = connectionWindowTarget
        encoder = HPACKEncoder(maxTableSize: min(4096, max(0, limits.maxEncoderTableSize)))
        // Both tables start at 4096 (RFC 7541 §4.2); our advertised size applies once the peer ACKs our SETTINGS.
        decoder = HPACKDecoder(maxTableSize: 4096, maxHeaderListSize: limits.maxHeaderListSize,
                               classifier: FieldClass.classify)
        handshake = role == .client ? .awaitingSettings : .awaitingPreface(matched: 0)
        nextLocalStreamID = role == .client ? 1 : 2
        closedQuietly = RecentStreamSet(capacity: max(256, limits.maxConcurrentStreams * 2))
        recentlyClosed = RecentStreamSet(capacity: max(256, limits.maxConcurrentStreams * 2))
        budgets = AbuseBudgets(limits: limits)
        output.reserveCapacity(4096)
        if role == .client { output.append(contentsOf: HTTP2Constants.clientPreface) }
        var settings = [
            HTTP2Setting(id: HTTP2Setting.initialWindowSize, value: UInt32(streamWindowTarget)),
            HTTP2Setting(id: HTTP2Setting.maxHeaderListSize, value: UInt32(clamping: max(0, limits.maxHeaderListSize))),
        ]
        if role == .server {
            settings.insert(HTTP2Setting(id: HTTP2Setting.maxConcurrentStreams,
                                         value: UInt32(clamping: max(0, limits.maxConcurrentStreams))), at: 0)
        } else {
            settings.insert(HTTP2Setting(id: HTTP2Setting.enablePush, value: 0), at: 0)
        }
        if limits.headerTableSize != 4096 {
            settings.append(HTTP2Setting(id: HTTP2Setting.headerTableSize, value: UInt32(clamping: max(0, limits.headerTableSize))))
        }
        FrameWriter.appendSettings(into: &output, settings)
        unackedSettings = 1
        if connectionWindowTarget > HTTP2Constants.defaultWindowSize {
            FrameWriter.appendWindowUpdate(into: &output, streamID: 0,
                                           increment: UInt32(connectionWindowTarget - HTTP2Constants.defaultWindowSize))
        }
    }

    // MARK: - Public state

    public var hasOutput: Bool { !output.isEmpty }

    /// Everything queued for the socket, in order. Also resets the queued-control-frame budget: the owner should call
    /// it when the socket can take more bytes, so a peer that does not read cannot make us queue answers forever.
    public func takeOutput() -> [UInt8] {
        budgets.outputTaken()
        var taken: [UInt8] = []
        taken.reserveCapacity(max(4096, output.count))
        swap(&taken, &output)
        return taken
    }

    public var openStreamCount: Int { streams.count }
    /// The client preface arrived (always true in the client role).
    public var receivedPreface: Bool {
        if case .awaitingPreface = handshake { return false }
        return true
    }
    /// GOAWAY sent or received, or the connection failed.
    public var isDraining: Bool { phase != .open }
    /// A connection error queued GOAWAY: flush the output and close (set also by a failing send call).
    public var didFail: Bool { isClosed }
    var isClosed: Bool {
        if case .closed = phase { return true }
        return false
    }
    /// The GOAWAY we sent, if any.
    var goAwaySent: GoAwaySent {
        if case let .goingAway(goAway) = phase { return goAway.sent }
        return .none
    }
    /// Our SETTINGS were sent and not yet acknowledged (RFC 9113 §6.5.3 lets the owner time this out with
    /// `goAway(code: .settingsTimeout, ...)`).
    public var isAwaitingSettingsAck: Bool { unackedSettings > 0 }
    /// DATA bytes waiting for the peer's flow-control windows.
    public var queuedOutputBytes: Int { queuedDataBytes }
    /// Size of the effective frames we send: the peer's MAX_FRAME_SIZE, never above 16384.
    var sendFrameSize: Int { min(peerMaxFrameSize, HTTP2Constants.defaultMaxFrameSize) }

    // MARK: - Input

    /// Consumes bytes from the socket with the owner's monotonic clock (nanoseconds), which sharpens the
    /// rapid-reset defence (see `HTTP2Limits.rapidResetMaxStreamAgeNanos`).
    public func receive(_ bytes: ArraySlice<UInt8>, now: UInt64) -> [HTTP2Event] {
        budgets.now = now
        return receive(bytes)
    }

    /// Consumes bytes from the socket. Any split of the byte stream gives the same events.
    public func receive(_ bytes: ArraySlice<UInt8>) -> [HTTP2Event] {
        var events = deferredEvents
        deferredEvents.removeAll()
        guard !isClosed else { return events }
        // Sized like the previous read's (capped): one allocation per read instead of one per doubling.
        events.reserveCapacity(eventsPerRead)
        defer { eventsPerRead = min(max(events.count, 4), 64) }
        reader.append(bytes)
        if case var .awaitingPreface(matched) = handshake {
            let expected = HTTP2Constants.clientPreface
            for byte in reader.takeRawBytes(upTo: expected.count - matched) {
                guard byte == expected[matched] else {
                    fail(.protocolError, "invalid connection preface", &events)
                    return events
                }
                matched += 1
            }
            handshake = matched == expected.count ? .awaitingSettings : .awaitingPreface(matched: matched)
            guard handshake == .awaitingSettings else { return events }
        }
        while !isClosed {
            let frame: Frame?
            do {
                frame = try reader.nextFrame()
            } catch {
                switch error {
                case let .connection(code, reason):
                    fail(code, reason, &events)
                case let .stream(id, code, reason):
                    if handshake != .done {
                        fail(.protocolError, "first frame is not SETTINGS", &events)
                    } else if headerBlock != nil {
                        fail(.protocolError, "frame interleaved in a header block", &events)
                    } else {
                        streamError(id, code, reason, surface: streams[id] != nil, &events)
                    }
                }
                continue
            }
            guard let frame else { break }
            process(frame, &events)
        }
        if !isClosed {
            // Padding and DATA for streams we dropped are consumed at once; return their credit.
            if limits.creditOnConsumption { replenishConnectionWindow() }
            flushSendQueue()
        }
        return events
    }

    // MARK: - Errors

    /// Connection error (§5.4.1): GOAWAY with the last processed stream, then ignore all further input.
    func fail(_ code: HTTP2ErrorCode, _ reason: String, _ events: inout [HTTP2Event]) {
        guard !isClosed else { return }
        phase = .closed(code: code)
        writeGoAway(lastStreamID: lastProcessedPeerStreamID, code: code, debug: reason)
        for stream in streams.values { stream.pending.removeAll() }
        streams.removeAll()
        sendQueue.removeAll()
        queuedDataBytes = 0
        headerBlock = nil
        reader = FrameReader()
        events.append(.connectionError(code: code, reason: reason))
    }

    /// Stream error (§5.4.2): RST_STREAM, forget the stream, and drop its late frames quietly.
    func streamError(_ id: UInt32, _ code: HTTP2ErrorCode, _ reason: String, surface: Bool,
                     _ events: inout [HTTP2Event]) {
        FrameWriter.appendRstStream(into: &output, streamID: id, code: code)
        if let stream = streams[id] { removeStream(stream) }
        closedQuietly.insert(id)
        if surface { events.append(.streamError(streamID: id, code: code, reason: reason)) }
        countControlFrame(&events)
    }

    /// A peer overran an abuse budget: GOAWAY(ENHANCE_YOUR_CALM).
    func fail(_ budget: AbuseBudget, _ events: inout [HTTP2Event]) {
        fail(.enhanceYourCalm, budget.reason, &events)
    }

    /// Counts an answer the peer forced us to queue (PING ACK, SETTINGS ACK, RST_STREAM) against the flood budget.
    func countControlFrame(_ events: inout [HTTP2Event]) {
        if let overrun = budgets.controlFrameQueued() { fail(overrun, &events) }
    }

    /// Counts a frame that made no progress (CVE-2019-9518 style floods).
    func countEmptyFrame(_ events: inout [HTTP2Event]) {
        if let overrun = budgets.emptyFrame() { fail(overrun, &events) }
    }

    func writeGoAway(lastStreamID: UInt32, code: HTTP2ErrorCode, debug: String) {
        FrameWriter.appendGoAway(into: &output, lastStreamID: lastStreamID, code: code, debug: debug.utf8.prefix(128))
    }

    // MARK: - Stream bookkeeping

    func isPeerInitiated(_ id: UInt32) -> Bool { (id & 1 == 1) == (role == .server) }

    /// Never-used stream ids (§5.1 idle); frames other than HEADERS/PRIORITY on them are a connection error.
    func isIdle(_ id: UInt32) -> Bool {
        isPeerInitiated(id) ? id > highestPeerStreamID : id >= nextLocalStreamID
    }

    func removeStream(_ stream: HTTP2Stream) {
        if streams.removeValue(forKey: stream.id) == nil { return }
        stream.close()
        recentlyClosed.insert(stream.id)
        var remaining = 0
        for (index, item) in stream.pending.enumerated() {
            remaining += item.bytes.count - (index == 0 ? stream.pendingOffset : 0)
        }
        queuedDataBytes -= remaining
        stream.pending.removeAll()
        stream.pendingOffset = 0
        if stream.buffered > 0 {
            // What a gone stream held counts as consumed: the connection gets that credit back.
            connectionBuffered -= stream.buffered
            stream.buffered = 0
            replenishConnectionWindow()
        }
    }

    /// Our END_STREAM was written.
    func closeLocal(_ stream: HTTP2Stream) {
        if stream.localEnded() { removeStream(stream) }
    }

    /// The peer's END_STREAM arrived.
    func closeRemote(_ stream: HTTP2Stream) {
        if stream.remoteEnded() { removeStream(stream) }
    }
}
