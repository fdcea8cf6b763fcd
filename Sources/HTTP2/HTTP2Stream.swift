// Per-stream state (RFC 9113 §5.1) and the bookkeeping for closed streams.
import HPACK

/// One outgoing item waiting for its turn: DATA bytes (flow controlled) or a header block (trailers, which must
/// stay behind the data queued before them).
struct PendingOutbound {
    var bytes: [UInt8]
    var fields: [HeaderField]?
    var endStream: Bool
}

/// A stream that is idle-but-reserved (client role), open or half-closed. Closed streams are removed from the
/// connection's table; `RecentStreamSet` remembers the ones we reset.
final class HTTP2Stream {
    enum State { case idle, open, halfClosedLocal, halfClosedRemote }

    let id: UInt32
    var state: State
    /// Our send window: may go negative when the peer shrinks SETTINGS_INITIAL_WINDOW_SIZE (§6.9.2).
    var sendWindow: Int
    /// What the peer may still send before we return credit.
    var recvWindow: Int
    /// Bytes received and delivered but not yet returned by WINDOW_UPDATE.
    var recvUnreturned = 0
    /// With `creditOnConsumption`: DATA payload delivered to the owner and not yet consumed.
    var buffered = 0
    var pending: [PendingOutbound] = []
    /// Bytes of `pending[0]` already written.
    var pendingOffset = 0
    /// The caller already queued END_STREAM: later sends are ignored.
    var localEndQueued = false
    /// We started answering (rapid-reset accounting counts resets before this).
    var headersSent = false
    /// The peer's initial headers arrived; a later HEADERS is trailers.
    var headersReceived = false
    var inSendQueue = false
    /// Position among the streams the peer opened, for the rapid-reset sliding count.
    var openSequence = 0
    /// The owner's clock when the stream opened (0 when no times are passed in).
    var openedAt: UInt64 = 0
    /// Declared content-length and DATA bytes seen so far (§8.1.1).
    var expectedContentLength: Int?
    var receivedDataBytes = 0

    init(id: UInt32, state: State, sendWindow: Int, recvWindow: Int) {
        self.id = id
        self.state = state
        self.sendWindow = sendWindow
        self.recvWindow = recvWindow
    }

    var remoteClosed: Bool { state == .halfClosedRemote }
    /// The peer may still send on it (DATA, trailers).
    var remoteOpen: Bool { state == .open || state == .halfClosedLocal }
}

/// A bounded FIFO set of stream ids (streams we reset or chose to ignore), so late frames for them are dropped
/// quietly as §5.1 allows, without remembering every stream forever.
struct RecentStreamSet {
    private var members = Set<UInt32>()
    private var order: [UInt32] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    func contains(_ id: UInt32) -> Bool { members.contains(id) }

    mutating func insert(_ id: UInt32) {
        guard !members.contains(id) else { return }
        if order.count < capacity {
            order.append(id)
        } else {
            members.remove(order[next])
            order[next] = id
            next = (next + 1) % capacity
        }
        members.insert(id)
    }
}
