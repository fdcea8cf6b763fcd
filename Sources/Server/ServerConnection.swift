// One accepted unix-socket connection. Its own thread is the only one that touches its gRPC/HTTP/2 state (checked in
// debug builds): it reads the socket, runs calls through the pipeline, answers and writes. Other threads talk to it
// through its mailbox only: a pool thread posts a finished call, the server posts shutdown commands, and a write to
// an eventfd polled beside the socket wakes the owner. A call answered inline touches neither.
import Audit
import FoundationEssentials
import Glibc
import GRPC
import GRPCCodes
import HTTP2
import KMS
import KMSRPC
import Locking
import Synchronization
import Transport

final class ServerConnection: @unchecked Sendable {
    let id: UInt64
    let fd: Int32
    let peer: PeerCredentials
    /// Strong: a call still on the worker pool keeps the server alive; the cycle ends when the connection finishes.
    private let server: KMSServer
    private let pipeline: CallPipeline
    private let party: CallParty

    // Owned by the connection's thread (`checkOwner()`): nothing else reads or writes these.
    private let grpc: GRPCServerConnection
    private var ownerThread: pthread_t?
    /// Calls on the worker pool, by stream: a RST_STREAM or the connection's end cancels them.
    private var poolCalls: [UInt32: CallCancellation] = [:]
    private var writeFailed = false
    /// Best-effort audit records of the calls answered this turn, enqueued after the turn's write.
    private var auditBatch = AuditBatch()

    // Shared with other threads.
    private let mailbox = LockedValue<[Message]>([])
    /// Readable while the mailbox has something; written only by `post` when the mailbox was empty.
    private let wakeFD: Int32
    /// Calls handed out and not answered yet, published by the owner after each turn for `hasWorkInProgress`.
    private let callsInProgress = Atomic<Int>(0)

    private enum Message: Sendable {
        /// A call the pool finished (its finishing stages already ran there): the owner only answers it.
        case completed(CallArrival, CallOutcome, finished: UInt64)
        case beginGracefulShutdown
        /// Final GOAWAY, then close.
        case finish
    }

    init(id: UInt64, fd: Int32, peer: PeerCredentials, server: KMSServer) throws(SystemError) {
        let wake = eventFD(0, Int32(O_NONBLOCK | O_CLOEXEC))  // EFD_NONBLOCK, EFD_CLOEXEC have O_'s values
        guard wake >= 0 else { throw SystemError("eventfd") }
        self.wakeFD = wake
        self.id = id
        self.fd = fd
        self.peer = peer
        self.server = server
        self.pipeline = server.pipeline
        self.party = CallParty(peer: peer, connection: id)
        self.grpc = GRPCServerConnection(knownPaths: KMSMethod.paths, limits: server.configuration.grpc,
                                         budget: server.requestBuffers)
    }

    /// A pool job may still post after the owner left: the eventfd lives as long as anyone holds the connection.
    deinit { close(wakeFD) }

    func start() {
        startThread(name: "kekd-conn-\(id)") { [self] in run() }
    }

    var hasWorkInProgress: Bool { callsInProgress.load(ordering: .acquiring) > 0 }

    func beginGracefulShutdown() { post(.beginGracefulShutdown) }

    func finish() { post(.finish) }

    private func post(_ message: Message) {
        let wasEmpty = mailbox.withLock { box in
            let empty = box.isEmpty
            box.append(message)
            return empty
        }
        if wasEmpty {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    /// Like Go's serveG.check(): state of this connection is touched by its own thread only.
    @inline(__always) func checkOwner() {
        #if DEBUG
        precondition(ownerThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false,
                     "connection \(id) state touched off its own thread")
        #endif
    }

    private func run() {
        ownerThread = pthread_self()
        let config = server.configuration
        Posix.setTimeout(fd, option: SO_SNDTIMEO, seconds: config.writeTimeout)
        flush()  // our SETTINGS go first
        let bufferSize = 64 * 1024
        // Read straight into an array that `receive` takes a slice of: the frame reader copies what it keeps, so no
        // per-read array is made.
        var buffer = [UInt8](repeating: 0, count: bufferSize)
        let started = Posix.monotonicNanos()
        var lastActivity = started
        var requestDeadline: UInt64?  // the oldest incomplete request's
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        var spin = SpinBeforeSleep(limitNanos: config.spinBeforeSleepNanos)
        loop: while true {
            // Wait with a timeout so a silent peer cannot hold the connection forever.
            fds[0].revents = 0
            fds[1].revents = 0
            let ready = spin.poll(&fds, timeoutMillis: Self.pollTimeoutMillis(until: requestDeadline))
            if ready < 0 && errno != EINTR { break }
            let now = Posix.monotonicNanos()
            var close = false
            if fds[1].revents != 0 { close = readMailbox() }
            // Checked on every wake-up, so a peer that keeps sending cannot keep its half-open streams alive.
            if let deadline = requestDeadline, now >= deadline {
                expireIncompleteRequests(now: now)
            }
            if ready <= 0 {
                if checkTimeouts(now: now, started: started, lastActivity: lastActivity) { break }
            } else if fds[0].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, bufferSize) }
                if n == 0 { break }
                if n < 0 {
                    if errno != EINTR && errno != EAGAIN { break }
                } else {
                    lastActivity = now
                    if receive(buffer[0..<n], now: now) { close = true }
                }
            }
            // A send can fail the connection (a client that never reads filled maxQueuedOutputBytes).
            if grpc.http2.didFail {
                server.metrics?.protocolError(.queuedOutputLimit)
                close = true
            }
            requestDeadline = grpc.nextRequestDeadline
            flush()
            pipeline.recordDeferred(&auditBatch)
            callsInProgress.store(poolCalls.count + grpc.inFlightCount, ordering: .releasing)
            if close || writeFailed { break }
        }
        // Whatever is still on the pool works for nobody now.
        for cancellation in poolCalls.values { cancellation.cancel() }
        grpc.releaseBufferedRequests()  // the server-wide budget must not leak what this connection held
        callsInProgress.store(0, ordering: .releasing)
        Glibc.close(fd)
        server.connectionFinished(id)
    }

    /// Feeds the state machine; returns true when the connection must close after this turn's flush.
    private func receive(_ bytes: ArraySlice<UInt8>, now: UInt64) -> Bool {
        checkOwner()
        var close = false
        for event in grpc.receive(bytes, now: now) {
            switch event {
            case .call(let request):
                handle(CallArrival(request, arrived: now))
            case let .rejected(streamID, path, status):
                pipeline.recordRejected(path: path, streamID: streamID, status: status, who: party, now: now)
            case .cancelled(let streamID):
                poolCalls[streamID]?.cancel()  // its completion records it as CANCELLED
            case let .streamProtocolError(kind, reason):
                server.metrics?.protocolError(kind)
                server.logger.debug("stream error", ["connection": id, "kind": kind, "reason": reason])
            case let .connectionError(kind, reason):
                server.metrics?.protocolError(kind)
                server.logger.warn("connection error; sent GOAWAY", ["connection": id, "kind": kind, "reason": reason, "pid": peer.pid])
                close = true
            case .peerGoAway:
                break
            }
        }
        return close
    }

    /// Takes what other threads posted; returns true when the connection must close.
    private func readMailbox() -> Bool {
        checkOwner()
        var count: UInt64 = 0
        _ = read(wakeFD, &count, 8)  // resets the eventfd before the mailbox is emptied, so no post is missed
        let messages = mailbox.withLock { box in
            let taken = box
            box.removeAll(keepingCapacity: true)
            return taken
        }
        var close = false
        for message in messages {
            switch message {
            case let .completed(call, outcome, finished):
                poolCalls[call.request.streamID] = nil
                answer(call, outcome, finished: finished)
            case .beginGracefulShutdown:
                grpc.http2.beginGracefulShutdown()
            case .finish:
                grpc.http2.goAway(code: .noError, debug: "server shutting down")
                close = true
            }
        }
        return close
    }

    /// Until `deadline` (at most 1 s, so the other timeouts are still checked).
    private static func pollTimeoutMillis(until deadline: UInt64?) -> Int32 {
        guard let deadline else { return 1000 }
        let now = Posix.monotonicNanos()
        guard deadline > now else { return 0 }
        return Int32(min(1000, (deadline - now) / 1_000_000 + 1))
    }

    /// Resets the streams whose request did not complete within --request-timeout.
    private func expireIncompleteRequests(now: UInt64) {
        checkOwner()
        for case let .streamProtocolError(kind, reason) in grpc.expireIncompleteRequests(now: now) {
            server.metrics?.protocolError(kind)
            server.logger.debug("stream reset", ["connection": id, "kind": kind, "reason": reason, "pid": peer.pid])
        }
    }

    /// Returns true when the connection should close.
    private func checkTimeouts(now: UInt64, started: UInt64, lastActivity: UInt64) -> Bool {
        checkOwner()
        let config = server.configuration
        if !grpc.http2.receivedPreface, Double(now - started) / 1e9 > config.prefaceTimeout {
            grpc.http2.goAway(code: .protocolError, debug: "no client preface within \(config.prefaceTimeout)s")
            flush()
            server.metrics?.protocolError(.prefaceTimeout)
            return true
        }
        if grpc.http2.isAwaitingSettingsAck, Double(now - lastActivity) / 1e9 > config.prefaceTimeout {
            grpc.http2.goAway(code: .settingsTimeout, debug: "SETTINGS not acknowledged")
            flush()
            server.metrics?.protocolError(.settingsTimeout)
            return true
        }
        let idle = grpc.http2.openStreamCount == 0 && grpc.inFlightCount == 0 && poolCalls.isEmpty
        if config.idleTimeout > 0, idle, Double(now - lastActivity) / 1e9 > config.idleTimeout {
            grpc.http2.goAway(code: .noError, debug: "idle timeout")
            flush()
            return true
        }
        return false
    }

    /// Admission, then the work inline or on the pool.
    private func handle(_ call: consuming CallArrival) {
        pipeline.metrics?.callStarted(op: call.metricsOp)
        if let refused = pipeline.admit(call, peer: peer, now: call.arrived) {
            complete(call, refused)
            return
        }
        let decoded = pipeline.dispatcher.decode(call.method!, message: call.request.message)
        if pipeline.runsInline(decoded) {
            complete(call, pipeline.dispatcher.handle(decoded, context: call.context))
            return
        }
        guard server.acquireBackendSlot() else {
            complete(call, CallOutcome(method: call.method, status: GRPCStatus(
                .resourceExhausted, "too many calls in flight (limit \(server.configuration.maxInFlightBackendCalls))")))
            return
        }
        let cancellation = CallCancellation()
        call.context.cancellation = cancellation
        poolCalls[call.request.streamID] = cancellation
        server.workers.submit { [self, call, decoded] in
            var outcome: CallOutcome
            let start = Posix.monotonicNanos()
            if call.context.isCancelled {
                // Reset (or the connection closed) while waiting for a worker: no backend work.
                outcome = CallOutcome(method: call.method, status: GRPCStatus(.cancelled, "client cancelled the call"))
            } else if let expired = CallPipeline.deadlineBeforeWork.check(call, peer, start) {
                outcome = CallOutcome(method: call.method, status: expired)  // waited on the pool past its deadline
            } else {
                outcome = pipeline.dispatcher.handle(decoded, context: call.context)
            }
            let finished = Posix.monotonicNanos()
            // Here, not on the owner: a fail-closed audit record waits for its fsync.
            var audited = AuditBatch()
            pipeline.finish(call, &outcome, who: party, finished: finished, deferred: &audited)
            pipeline.recordDeferred(&audited)
            server.releaseBackendSlot()
            post(.completed(call, outcome, finished: finished))
        }
    }

    /// Finishes a call answered on this thread.
    private func complete(_ call: CallArrival, _ outcome: consuming CallOutcome) {
        let finished = Posix.monotonicNanos()
        pipeline.finish(call, &outcome, who: party, finished: finished, deferred: &auditBatch)
        answer(call, outcome, finished: finished)
    }

    /// Queues the answer (or finds the stream gone) and counts the call.
    private func answer(_ call: CallArrival, _ outcome: CallOutcome, finished: UInt64) {
        checkOwner()
        let streamID = call.request.streamID
        let delivered = if outcome.status.code == .ok, let response = outcome.response {
            grpc.respond(streamID: streamID, message: response)
        } else {
            grpc.fail(streamID: streamID, status: outcome.status)
        }
        pipeline.observe(call, code: delivered ? outcome.status.code : .cancelled, finished: finished)
    }

    /// Hands queued output to the socket. After a failed write or a connection error the loop closes.
    private func flush() {
        checkOwner()
        guard grpc.http2.hasOutput else { return }
        let output = grpc.http2.takeOutput()
        if !writeFailed, !Posix.writeAll(fd, output) { writeFailed = true }
    }
}

// glibc's eventfd(2) wrapper; <sys/eventfd.h> is not in the Glibc module.
@_silgen_name("eventfd")
private func eventFD(_ initialValue: UInt32, _ flags: Int32) -> Int32
