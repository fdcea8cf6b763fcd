// One accepted unix-socket connection: a reader thread feeding the pure gRPC/HTTP/2 state machine, and
// ordered writes of whatever it queues.
import Audit
import FoundationEssentials
import Locking
import Glibc
import GRPC
import HTTP2

final class ServerConnection: @unchecked Sendable {
    let id: UInt64
    let fd: Int32
    let peer: PeerCredentials
    /// Strong: a call still on the worker pool keeps the server alive; the cycle ends when the connection finishes.
    private let server: KMSServer

    /// Guards `grpc` (the state machine is not thread-safe).
    private let lock = Lock()
    private let grpc: GRPCServerConnection
    /// Taken before `lock` is released and held across write(2), so output chunks reach the socket in the
    /// order the state machine produced them without holding `lock` during a slow write.
    private let writeLock = Lock()
    private var writeFailed = false
    private var pendingWork = 0  // calls on the pool, guarded by `lock`

    init(id: UInt64, fd: Int32, peer: PeerCredentials, server: KMSServer) {
        self.id = id
        self.fd = fd
        self.peer = peer
        self.server = server
        self.grpc = GRPCServerConnection(knownPaths: KMSMethod.paths, limits: server.configuration.grpc,
                                         budget: server.requestBuffers)
    }

    func start() {
        startThread(name: "kekd-conn-\(id)") { [self] in run() }
    }

    var hasWorkInProgress: Bool {
        lock.lock(); defer { lock.unlock() }
        return pendingWork > 0 || grpc.inFlightCount > 0
    }

    func beginGracefulShutdown() {
        lock.lock()
        grpc.http2.beginGracefulShutdown()
        flushLocked()
    }

    /// Final GOAWAY, then wake the reader so it closes the socket.
    func finish() {
        lock.lock()
        grpc.http2.goAway(code: .noError, debug: "server shutting down")
        flushLocked()
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    private func run() {
        let config = server.configuration
        Posix.setTimeout(fd, option: SO_SNDTIMEO, seconds: config.writeTimeout)
        lock.lock()
        flushLocked()  // our SETTINGS go first
        let bufferSize = 64 * 1024
        // Read straight into an array that `receive` takes a slice of: the frame reader copies what it keeps, so no
        // per-read array is made.
        var buffer = [UInt8](repeating: 0, count: bufferSize)
        let started = Posix.monotonicNanos()
        var lastActivity = started
        var requestDeadline: UInt64?  // the oldest incomplete request's; a copy read without the lock
        loop: while true {
            // Wait with a timeout so a silent peer cannot hold the connection forever.
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Self.pollTimeoutMillis(until: requestDeadline))
            if ready < 0 && errno != EINTR { break }
            let now = Posix.monotonicNanos()
            // Checked on every wake-up, so a peer that keeps sending cannot keep its half-open streams alive.
            if let deadline = requestDeadline, now >= deadline {
                requestDeadline = expireIncompleteRequests(now: now)
                if writeFailedSnapshot() { break }
            }
            if ready <= 0 {
                if checkTimeouts(now: now, started: started, lastActivity: lastActivity) { break }
                continue
            }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, bufferSize) }
            if n == 0 { break }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; break }
            lastActivity = now
            lock.lock()
            let events = grpc.receive(buffer[0..<n], now: now)
            var closeAfterFlush = false
            for event in events {
                switch event {
                case .call(let request):
                    handle(request, arrived: now)
                case let .rejected(streamID, path, status):
                    let metricsOp = KMSMethod(rawValue: path)?.op ?? "other"
                    server.metrics?.callStarted(op: metricsOp)  // every finished call was started: in-flight stays exact
                    server.metrics?.callFinished(op: metricsOp, code: status.code.name, seconds: 0)
                    let outcome = CallOutcome(op: KMSMethod.op(forPath: path), status: status)
                    _ = server.audit?.record(auditEvent(outcome, streamID: streamID, arrived: now, finished: now))
                case .cancelled:
                    break  // the call's own completion records it as CANCELLED
                case let .streamProtocolError(kind, reason):
                    server.metrics?.protocolError(kind: kind)
                    server.logger.debug("stream error", ["connection": id, "kind": kind, "reason": reason])
                case let .connectionError(kind, reason):
                    server.metrics?.protocolError(kind: kind)
                    server.logger.warn("connection error; sent GOAWAY", ["connection": id, "kind": kind, "reason": reason, "pid": peer.pid])
                    closeAfterFlush = true
                case .peerGoAway:
                    break
                }
            }
            // A send can fail the connection (a client that never reads filled maxQueuedOutputBytes).
            if grpc.http2.didFail {
                server.metrics?.protocolError(kind: "queued_output_limit")
                closeAfterFlush = true
            }
            requestDeadline = grpc.nextRequestDeadline
            flushLocked()
            if closeAfterFlush || writeFailedSnapshot() { break }
        }
        lock.lock()
        grpc.releaseBufferedRequests()  // the server-wide budget must not leak what this connection held
        lock.unlock()
        close(fd)
        server.connectionFinished(id)
    }

    /// Until `deadline` (at most 1 s, so the other timeouts are still checked).
    private static func pollTimeoutMillis(until deadline: UInt64?) -> Int32 {
        guard let deadline else { return 1000 }
        let now = Posix.monotonicNanos()
        guard deadline > now else { return 0 }
        return Int32(min(1000, (deadline - now) / 1_000_000 + 1))
    }

    /// Resets the streams whose request did not complete within --request-timeout; returns the next deadline.
    private func expireIncompleteRequests(now: UInt64) -> UInt64? {
        lock.lock()
        for case let .streamProtocolError(kind, reason) in grpc.expireIncompleteRequests(now: now) {
            server.metrics?.protocolError(kind: kind)
            server.logger.debug("stream reset", ["connection": id, "kind": kind, "reason": reason, "pid": peer.pid])
        }
        let next = grpc.nextRequestDeadline
        flushLocked()
        return next
    }

    /// Returns true when the connection should close.
    private func checkTimeouts(now: UInt64, started: UInt64, lastActivity: UInt64) -> Bool {
        let config = server.configuration
        lock.lock()
        if !grpc.http2.receivedPreface, Double(now - started) / 1e9 > config.prefaceTimeout {
            grpc.http2.goAway(code: .protocolError, debug: "no client preface within \(config.prefaceTimeout)s")
            flushLocked()
            server.metrics?.protocolError(kind: "preface_timeout")
            return true
        }
        if grpc.http2.isAwaitingSettingsAck, Double(now - lastActivity) / 1e9 > config.prefaceTimeout {
            grpc.http2.goAway(code: .settingsTimeout, debug: "SETTINGS not acknowledged")
            flushLocked()
            server.metrics?.protocolError(kind: "settings_timeout")
            return true
        }
        let idle = grpc.http2.openStreamCount == 0 && grpc.inFlightCount == 0 && pendingWork == 0
        if config.idleTimeout > 0, idle, Double(now - lastActivity) / 1e9 > config.idleTimeout {
            grpc.http2.goAway(code: .noError, debug: "idle timeout")
            flushLocked()
            return true
        }
        lock.unlock()
        return false
    }

    private func writeFailedSnapshot() -> Bool {
        writeLock.lock(); defer { writeLock.unlock() }
        return writeFailed
    }

    /// Called with `lock` held; runs the call now or on the pool.
    private func handle(_ request: GRPCRequest, arrived: UInt64) {
        // The gRPC layer hands out only the paths it was given (`KMSMethod.paths`): the method is matched once here.
        guard let method = KMSMethod(rawValue: request.path) else {
            server.metrics?.callStarted(op: "other")
            complete(request, CallOutcome(op: request.path, status: GRPCStatus(.unimplemented, "unknown method \(request.path)")),
                     arrived: arrived)
            return
        }
        let op = method.op
        server.metrics?.callStarted(op: op)
        if !server.mayCall(method, peer: peer) {
            let outcome = CallOutcome(op: op, status: GRPCStatus(.permissionDenied, "uid \(peer.uid) may call Status only (--status-only-uids)"))
            complete(request, outcome, arrived: arrived)
            return
        }
        if let expired = Self.expiredBeforeWork(request, method, arrived: arrived) {
            complete(request, expired, arrived: arrived)
            return
        }
        let call = server.dispatcher.decode(method, message: request.message)
        if server.answersInline(call) {
            complete(request, server.dispatcher.handle(call), arrived: arrived)
            return
        }
        guard server.acquireBackendSlot() else {
            let outcome = CallOutcome(op: op, status: GRPCStatus(.resourceExhausted, "too many calls in flight (limit \(server.configuration.maxInFlightBackendCalls))"))
            complete(request, outcome, arrived: arrived)
            return
        }
        pendingWork += 1
        server.workers.submit { [self] in
            // A call that waited on the pool past its deadline does no backend work.
            let outcome = Self.expiredBeforeWork(request, method, arrived: arrived) ?? server.dispatcher.handle(call)
            lock.lock()
            pendingWork -= 1
            complete(request, outcome, arrived: arrived)
            flushLocked()
            server.releaseBackendSlot()
        }
    }

    /// DEADLINE_EXCEEDED when the client's deadline (grpc-timeout from arrival) has already passed: no work is done.
    private static func expiredBeforeWork(_ request: GRPCRequest, _ method: KMSMethod, arrived: UInt64) -> CallOutcome? {
        guard let timeout = request.timeoutNanos, Posix.monotonicNanos() - arrived >= timeout else { return nil }
        return CallOutcome(op: method.op, status: GRPCStatus(.deadlineExceeded, "deadline of \(timeout / 1000) µs passed before the call started"))
    }

    /// With `lock` held: enforce the deadline, write the audit record (fail-closed may veto), answer.
    private func complete(_ request: GRPCRequest, _ result: CallOutcome, arrived: UInt64) {
        var outcome = result
        let finished = Posix.monotonicNanos()
        if let timeout = request.timeoutNanos, finished - arrived > timeout, outcome.status.code == .ok {
            outcome.status = GRPCStatus(.deadlineExceeded, "deadline of \(timeout / 1000) µs passed before the call finished")
            outcome.response = nil
        }
        if let audit = server.audit {
            // In fail-closed mode this blocks until the record is durable; never release a result it could not record.
            lock.unlock()
            let recorded = audit.record(auditEvent(outcome, streamID: request.streamID, arrived: arrived, finished: finished))
            lock.lock()
            if !recorded, server.configuration.auditBlocksCalls {
                outcome.status = GRPCStatus(.unavailable, "audit log unavailable; call refused (fail-closed)")
                outcome.response = nil
            }
        }
        var delivered: Bool
        if outcome.status.code == .ok, let response = outcome.response {
            delivered = grpc.respond(streamID: request.streamID, message: response)
        } else {
            delivered = grpc.fail(streamID: request.streamID, status: outcome.status)
        }
        if !delivered { outcome.status = GRPCStatus(.cancelled, "client cancelled the call") }
        server.metrics?.callFinished(op: outcome.op.hasPrefix("/") ? "other" : outcome.op, code: outcome.status.code.name,
                                     seconds: Double(finished - arrived) / 1e9)
    }

    private func auditEvent(_ outcome: CallOutcome, streamID: UInt32, arrived: UInt64, finished: UInt64) -> AuditEvent {
        let wallArrival = Date(timeIntervalSinceNow: -Double(Posix.monotonicNanos() - arrived) / 1e9)
        return AuditEvent(time: wallArrival, op: outcome.op, uid: outcome.uid, keyID: outcome.keyID, backend: outcome.backend ?? server.backendName,
                          outcome: outcome.status.code.name, message: outcome.status.code == .ok ? nil : outcome.status.message,
                          latencyMicros: Int64((finished - arrived) / 1000),
                          peer: AuditPeer(pid: peer.pid, uid: peer.uid, gid: peer.gid), connection: id, stream: streamID,
                          ciphertext: outcome.ciphertext)
    }

    /// Must be called with `lock` held; releases it. Output is handed to the socket in production order.
    private func flushLocked() {
        let failed = grpc.http2.didFail
        guard grpc.http2.hasOutput else {
            lock.unlock()
            if failed { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
            return
        }
        let output = grpc.http2.takeOutput()
        writeLock.lock()
        lock.unlock()
        if !writeFailed, !Posix.writeAll(fd, output) {
            writeFailed = true
        }
        // After a failed write or a connection error (GOAWAY already written), wake the reader so it closes.
        if writeFailed || failed { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        writeLock.unlock()
    }
}
