// The KMS gRPC server: a listener thread, one owner thread per connection, and a bounded pool for calls that may
// block (a remote key backend or a fail-closed audit log). Calls that cannot block run inline on the connection's
// thread, which is both the fastest path and what keeps responses batched into few writes.
import Audit
import Dispatch
import FoundationEssentials
import Glibc
import GRPC
import GRPCCodes
import KMS
import KMSRPC
import Logging
import Metrics
import Locking
import Transport

public struct ServerConfiguration: Sendable {
    public var socketPath: String
    public var socketMode: mode_t = 0o600
    /// Peers (SO_PEERCRED uid) allowed to connect. Root only (kube-apiserver's uid): kekd's own uid is not a
    /// caller unless listed, so another process that happens to run as that uid cannot call Decrypt.
    public var allowedUIDs: Set<UInt32> = [0]
    /// Peers that may connect and call Status only: by default kekd's own uid, so an exec probe (`kekctl status`
    /// in kekd's container) works while a process sharing that uid still cannot Encrypt or Decrypt.
    public var statusOnlyUIDs: Set<UInt32> = [getuid()]
    public var grpc = GRPCServerLimits()
    public var maxConnections = 64
    /// Request bytes all connections together may hold while requests are still arriving; a stream whose DATA
    /// would exceed it is refused (RESOURCE_EXHAUSTED, RST_STREAM(ENHANCE_YOUR_CALM)). Per connection:
    /// `grpc.maxBufferedRequestBytesPerConnection`.
    public var maxBufferedRequestBytes = 32 << 20
    /// The client must send the HTTP/2 preface within this many seconds.
    public var prefaceTimeout: Double = 10
    /// A connection with no open stream and no traffic for this long gets GOAWAY and is closed (0 = never).
    public var idleTimeout: Double = 600
    /// A peer that does not read our responses for this long is disconnected.
    public var writeTimeout: Double = 10
    /// Calls waiting on a blocking backend at once; beyond it, RESOURCE_EXHAUSTED.
    public var maxInFlightBackendCalls = 256
    public var shutdownGrace: Double = 5
    /// How long a connection may poll its socket before sleeping, at most (adaptive: see `SpinBeforeSleep`); 0 never.
    public var spinBeforeSleepNanos = SpinBeforeSleep.defaultLimitNanos
    /// True with a fail-closed audit log: each call then waits for its record, so calls go to the pool where
    /// their fsyncs can be batched instead of serialising the connection, and a call it could not record is refused.
    public var auditBlocksCalls = false
    /// Where calls run when the audit log does not block them (kekd chooses it from its backends).
    public var execution = ExecutionPolicy.askBackend

    public init(socketPath: String) { self.socketPath = socketPath }
}

public final class KMSServer: @unchecked Sendable {
    public let configuration: ServerConfiguration
    let pipeline: CallPipeline
    let audit: AuditLog?
    let metrics: KekdMetrics?
    let logger: Logger
    let backendName: String
    /// Calls run on the pool when they may block; otherwise inline on the connection's reader thread.
    /// Calls currently on the worker pool; bounded by maxInFlightBackendCalls. (An atomic counter rather than a
    /// DispatchSemaphore: libdispatch traps when a semaphore is released while below its initial value.)
    private let backendCallsInFlight = LockedValue<Int>(0)
    let workers: WorkerPool
    /// Shared by the connections: the server-wide cap on buffered request bytes.
    let requestBuffers: SharedRequestBufferBudget

    private let state = LockedValue(State())
    private struct State {
        var listener: UnixSocketListener?
        var connections: [UInt64: ServerConnection] = [:]
        var nextConnectionID: UInt64 = 1
        var shuttingDown = false
    }
    /// shutdown() joins the accept thread through this; the Thread object itself is not kept, because its block
    /// holds the server and a stored reference would make a cycle that outlives shutdown (found by LeakSanitizer).
    private let acceptDone = DispatchSemaphore(value: 0)

    public init(configuration: ServerConfiguration, service: KMSService, audit: AuditLog?, metrics: KekdMetrics?, logger: Logger) {
        self.configuration = configuration
        self.pipeline = CallPipeline(configuration: configuration, dispatcher: KMSDispatcher(service: service), audit: audit,
                                     metrics: metrics)
        self.audit = audit
        self.metrics = metrics
        self.logger = logger
        self.backendName = service.backend.name
        self.workers = WorkerPool(maxThreads: configuration.maxInFlightBackendCalls)
        self.requestBuffers = SharedRequestBufferBudget(limit: configuration.maxBufferedRequestBytes)
    }

    /// Takes one pool slot, or returns false when all are in use.
    func acquireBackendSlot() -> Bool {
        let limit = configuration.maxInFlightBackendCalls
        return backendCallsInFlight.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }

    func releaseBackendSlot() { backendCallsInFlight.withLock { $0 -= 1 } }

    public var isListening: Bool { state.withLock { $0.listener != nil && !$0.shuttingDown } }
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    public func start() throws(SystemError) {
        let listener = try UnixSocketListener.bind(path: configuration.socketPath, mode: configuration.socketMode, logger: logger)
        state.withLock { $0.listener = listener }
        startThread(name: "kekd-accept") { [self] in
            acceptLoop(listener)
            acceptDone.signal()
        }
    }

    private func acceptLoop(_ listener: UnixSocketListener) {
        while let fd = listener.accept() {
            let peer = PeerCredentials.of(socket: fd)
            guard let peer, configuration.allowedUIDs.contains(peer.uid) || configuration.statusOnlyUIDs.contains(peer.uid) else {
                refuse(fd, peer: peer, reason: peer.map { "uid \($0.uid) is not in --allowed-uids" } ?? "peer credentials unavailable")
                continue
            }
            let admitted: Result<ServerConnection, SystemError>? = state.withLock { s in
                guard !s.shuttingDown, s.connections.count < configuration.maxConnections else { return nil }
                let id = s.nextConnectionID
                s.nextConnectionID += 1
                do throws(SystemError) {
                    let c = try ServerConnection(id: id, fd: fd, peer: peer, server: self)
                    s.connections[id] = c
                    return .success(c)
                } catch {
                    return .failure(error)
                }
            }
            let connection: ServerConnection
            switch admitted {
            case .success(let c): connection = c
            case .failure(let error): refuse(fd, peer: peer, reason: "\(error)"); continue
            case nil: refuse(fd, peer: peer, reason: "connection limit \(configuration.maxConnections) reached"); continue
            }
            metrics?.connectionOpened()
            connection.start()
        }
    }

    private func refuse(_ fd: Int32, peer: PeerCredentials?, reason: String) {
        close(fd)
        logger.warn("refused connection", ["reason": reason, "pid": peer?.pid ?? -1, "uid": Int(peer?.uid ?? UInt32.max)])
        metrics?.protocolError(.refusedConnection)
        _ = audit?.record(AuditEvent(time: Date(), op: "connection", uid: nil, keyID: nil, backend: backendName,
                                     outcome: GRPCStatusCode.permissionDenied.name, message: reason, latencyMicros: 0,
                                     peer: peer,
                                     connection: 0, stream: 0, ciphertext: nil))
    }

    func connectionFinished(_ id: UInt64) {
        let removed = state.withLock { $0.connections.removeValue(forKey: id) }
        if removed != nil { metrics?.connectionClosed() }
    }

    /// Stops accepting, sends GOAWAY everywhere, waits up to the grace period for in-flight calls, closes
    /// every connection and removes the socket file.
    public func shutdown() {
        let (listener, connections): (UnixSocketListener?, [ServerConnection]) = state.withLock { s in
            let l = s.shuttingDown ? nil : s.listener
            s.shuttingDown = true
            return (l, Array(s.connections.values))
        }
        guard let listener else { return }
        listener.shutdownAndRemove()
        acceptDone.wait()
        listener.closeDescriptor()
        for c in connections { c.beginGracefulShutdown() }
        let deadline = Posix.monotonicNanos() + UInt64(configuration.shutdownGrace * 1e9)
        while Posix.monotonicNanos() < deadline {
            let busy = state.withLock { $0.connections.values.contains { $0.hasWorkInProgress } }
            if !busy { break }
            usleep(10_000)
        }
        for c in state.withLock({ Array($0.connections.values) }) { c.finish() }
        let closeDeadline = Posix.monotonicNanos() + 1_000_000_000
        while state.withLock({ !$0.connections.isEmpty }) && Posix.monotonicNanos() < closeDeadline { usleep(5_000) }
        logger.info("server stopped", ["socket": configuration.socketPath])
    }
}
