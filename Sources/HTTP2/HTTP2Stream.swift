// Per-stream state (RFC 9113 §5.1) and the bookkeeping for closed streams.
import HPACK

/// One outgoing item waiting for its turn: DATA bytes (flow controlled) or a header block (trailers, which must
/// stay behind the data queued before them).
struct PendingOutbound {
    var bytes: [UInt8]
    var fields: [HeaderField]?
    var endStream: Bool
}

/// One stream and its RFC 9113 §5.1 state. Closed streams leave the connection's table; `RecentStreamSet`
/// remembers the ones we reset.
final class HTTP2Stream {
    /// Our sending side while it is open.
    enum LocalSide: Equatable {
        /// Nothing sent yet (a request not answered so far).
        case awaitingHeaders
        /// Headers sent: we started answering (rapid-reset accounting counts only resets before this).
        case sending
        /// END_STREAM queued behind pending output: later sends are ignored; the side closes once it is written.
        case ending
    }

    /// The peer's sending side while it is open.
    struct RemoteSide: Equatable {
        /// The peer's initial headers arrived (a later HEADERS is trailers); false on our own streams until the
        /// final response headers.
        var headersReceived: Bool
        /// Declared content-length and DATA bytes seen so far (§8.1.1).
        var expectedContentLength: Int?
        var receivedDataBytes = 0
    }

    /// §5.1 states with what each side still needs; reserved states do not occur (push is disabled).
    enum State: Equatable {
        /// Client role: an id reserved by `openStream()`, headers not sent yet.
        case idle
        case open(local: LocalSide, remote: RemoteSide)
        case halfClosedLocal(remote: RemoteSide)
        case halfClosedRemote(local: LocalSide)
        case closed
    }

    let id: UInt32
    private(set) var state: State
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
    var inSendQueue = false
    /// Position among the streams the peer opened, for the rapid-reset sliding count.
    var openSequence = 0
    /// The owner's clock when the stream opened (0 when no times are passed in).
    var openedAt: UInt64 = 0

    init(id: UInt32, state: State, sendWindow: Int, recvWindow: Int) {
        self.id = id
        self.state = state
        self.sendWindow = sendWindow
        self.recvWindow = recvWindow
    }

    // MARK: - Reading the state

    /// The peer's side while it may still send (DATA, trailers).
    var remote: RemoteSide? {
        switch state {
        case let .open(_, remote), let .halfClosedLocal(remote): remote
        case .idle, .halfClosedRemote, .closed: nil
        }
    }

    var remoteOpen: Bool { remote != nil }
    /// The peer sent END_STREAM and we still answer.
    var remoteClosed: Bool {
        if case .halfClosedRemote = state { return true }
        return false
    }

    /// We sent headers (or more) on it.
    var answered: Bool {
        switch state {
        case .idle: false
        case let .open(local, _), let .halfClosedRemote(local): local != .awaitingHeaders
        case .halfClosedLocal, .closed: true
        }
    }

    // MARK: - Transitions (§5.1)

    /// We queue headers; false if our side is done or ending. An idle stream opens.
    func queueHeaders(endStream: Bool) -> Bool {
        let local: LocalSide = endStream ? .ending : .sending
        switch state {
        case .idle: state = .open(local: local, remote: RemoteSide(headersReceived: false))
        case let .open(current, remote) where current != .ending: state = .open(local: local, remote: remote)
        case let .halfClosedRemote(current) where current != .ending: state = .halfClosedRemote(local: local)
        default: return false
        }
        return true
    }

    /// We queue DATA; false if the stream is not open on our side or already ending.
    func queueData(endStream: Bool) -> Bool {
        switch state {
        case let .open(local, remote) where local != .ending:
            if endStream { state = .open(local: .ending, remote: remote) }
        case let .halfClosedRemote(local) where local != .ending:
            if endStream { state = .halfClosedRemote(local: .ending) }
        default: return false
        }
        return true
    }

    /// Our END_STREAM went out; true if the stream is now closed.
    func localEnded() -> Bool {
        switch state {
        case .idle: state = .halfClosedLocal(remote: RemoteSide(headersReceived: false))
        case let .open(_, remote): state = .halfClosedLocal(remote: remote)
        case .halfClosedRemote: state = .closed
        case .halfClosedLocal, .closed: break
        }
        return state == .closed
    }

    /// The peer's END_STREAM arrived; true if the stream is now closed.
    func remoteEnded() -> Bool {
        switch state {
        case let .open(local, _): state = .halfClosedRemote(local: local)
        case .halfClosedLocal: state = .closed
        case .idle, .halfClosedRemote, .closed: break
        }
        return state == .closed
    }

    /// Updates the peer's side while it is open (headers, DATA counts).
    func updateRemote(_ change: (inout RemoteSide) -> Void) {
        switch state {
        case .open(let local, var remote):
            change(&remote)
            state = .open(local: local, remote: remote)
        case .halfClosedLocal(var remote):
            change(&remote)
            state = .halfClosedLocal(remote: remote)
        case .idle, .halfClosedRemote, .closed:
            break
        }
    }

    func close() { state = .closed }
}

/// A bounded FIFO set of stream ids (streams we reset or chose to ignore), so late frames for them are dropped
/// quietly as §5.1 allows, without remembering every stream forever. Every closed stream passes through it, so its
/// members sit in a `StreamIDMap` (no `Hasher`) rather than a `Set`. Stream 0 is never a member.
struct RecentStreamSet {
    private var members = StreamIDMap<Void>()
    private var order: [UInt32] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    func contains(_ id: UInt32) -> Bool { members.contains(id) }

    mutating func insert(_ id: UInt32) {
        guard !contains(id) else { return }
        if order.count < capacity {
            order.append(id)
        } else {
            members.removeValue(forKey: order[next])
            order[next] = id
            next = (next + 1) % capacity
        }
        members[id] = ()
    }
}
