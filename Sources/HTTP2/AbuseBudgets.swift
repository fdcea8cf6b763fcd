// The connection's abuse budgets in one place: what a peer may make us do before we answer GOAWAY(ENHANCE_YOUR_CALM).

/// A budget a peer overran; `reason` is the GOAWAY debug text and the `.connectionError` reason.
enum AbuseBudget: Equatable {
    /// PING/SETTINGS/RST_STREAM answers piling up in an output the peer does not read (CVE-2019-9512/9515).
    case queuedControlFrames
    /// Frames that make no progress (CVE-2019-9518).
    case emptyFrames
    /// Streams reset by the peer before we answered (CVE-2023-44487).
    case rapidResets
    /// CONTINUATION frames after one HEADERS (CONTINUATION flood).
    case continuationFrames
    /// A compressed header block larger than `maxHeaderBlockBytes`.
    case headerBlockBytes
    /// DATA blocked by the peer's flow-control windows beyond `maxQueuedOutputBytes`.
    case queuedOutputBytes

    var reason: String {
        switch self {
        case .queuedControlFrames: "too many queued control frames"
        case .emptyFrames: "too many empty frames"
        case .rapidResets: "too many streams reset before an answer"
        case .continuationFrames: "too many CONTINUATION frames"
        case .headerBlockBytes: "header block too large"
        case .queuedOutputBytes: "peer does not read: too much output blocked by flow control"
        }
    }
}

/// The counters behind every `AbuseBudget`, checked against `HTTP2Limits`. Times are the owner's monotonic clock in
/// nanoseconds, handed in with each input (`now`): the type reads no clock, so tests drive time by passing values.
struct AbuseBudgets {
    let limits: HTTP2Limits
    private(set) var queuedControlFrames = 0
    private(set) var consecutiveEmptyFrames = 0
    private var rapidResets: RapidResetTracker
    /// The owner's clock at the latest input, 0 if the owner passes none.
    var now: UInt64 = 0

    init(limits: HTTP2Limits) {
        self.limits = limits
        rapidResets = RapidResetTracker(window: limits.rapidResetWindow)
    }

    /// We queued an answer the peer forced (PING ACK, SETTINGS ACK, RST_STREAM); nil while within budget.
    mutating func controlFrameQueued() -> AbuseBudget? {
        queuedControlFrames += 1
        return queuedControlFrames > limits.maxQueuedControlFrames ? .queuedControlFrames : nil
    }

    /// The owner took our output: queued answers no longer count.
    mutating func outputTaken() { queuedControlFrames = 0 }

    /// A frame that made no progress; nil while within budget.
    mutating func emptyFrame() -> AbuseBudget? {
        consecutiveEmptyFrames += 1
        return consecutiveEmptyFrames > limits.maxConsecutiveEmptyFrames ? .emptyFrames : nil
    }

    /// DATA with payload or a new stream: the empty-frame run is over.
    mutating func progress() { consecutiveEmptyFrames = 0 }

    /// A peer-opened stream: its sequence number for the rapid-reset window.
    mutating func peerStreamOpened() -> Int { rapidResets.streamOpened() }

    /// The peer reset a stream it opened at `sequence`, time `openedAt`. It counts as rapid if we had not answered
    /// and (when times are passed) it came within `rapidResetMaxStreamAgeNanos`; nil while within budget.
    mutating func peerReset(sequence: Int, openedAt: UInt64, answered: Bool) -> AbuseBudget? {
        guard !answered, now &- openedAt <= limits.rapidResetMaxStreamAgeNanos else { return nil }
        return rapidResets.earlyReset(sequence: sequence) > limits.maxResetsPerWindow ? .rapidResets : nil
    }

    /// A header block of `bytes` compressed bytes after `continuations` CONTINUATION frames; nil if allowed.
    func headerBlock(bytes: Int, continuations: Int) -> AbuseBudget? {
        if continuations > limits.maxContinuationFrames { return .continuationFrames }
        return bytes > limits.maxHeaderBlockBytes ? .headerBlockBytes : nil
    }

    /// `bytes` of DATA waiting for the peer's windows; nil if allowed.
    func queuedOutput(bytes: Int) -> AbuseBudget? { bytes > limits.maxQueuedOutputBytes ? .queuedOutputBytes : nil }
}

/// Sliding count of peer-opened streams that the peer reset before we answered (CVE-2023-44487).
struct RapidResetTracker {
    private var marks: [Bool]
    private var opened = 0
    private(set) var resetCount = 0

    init(window: Int) { marks = Array(repeating: false, count: max(1, window)) }

    /// Registers a newly opened stream and returns its sequence number.
    mutating func streamOpened() -> Int {
        let slot = opened % marks.count
        if marks[slot] { marks[slot] = false; resetCount -= 1 }
        opened += 1
        return opened - 1
    }

    /// Records an early reset of the stream opened at `sequence`; returns the count within the window.
    mutating func earlyReset(sequence: Int) -> Int {
        if opened - sequence <= marks.count {
            let slot = sequence % marks.count
            if !marks[slot] { marks[slot] = true; resetCount += 1 }
        }
        return resetCount
    }
}
