// The path of one call, composed once when the server starts: admission stages (peer authorization, the deadline),
// dispatch (inline or on the worker pool, per the execution policy), then finishing stages (the deadline again, the
// audit record with the fail-closed veto) and metrics. ServerConnection only moves calls between these stages and
// its HTTP/2 state; every decision about a call is made here.
import Audit
import FoundationEssentials
import GRPC
import GRPCCodes
import KMS
import KMSRPC
import Metrics
import Transport

/// Where a call's work runs. Chosen when kekd is wired (the backend kinds and the audit mode are known then).
public enum ExecutionPolicy: Sendable {
    /// Every call on the connection's thread: no backend waits and the audit log never blocks.
    case inline
    /// Every call on the pool: a fail-closed audit log makes each call wait for its record to be durable.
    case pool
    /// On the connection's thread unless the backend says this call would wait now (`KeyBackend.wouldBlock`: a
    /// local KEK not cached, a Vault wrap due). Only the backend knows its caches, so its answer is the input.
    case askBackend
}

/// One call as it arrived, with what travels with it: the typed method (matched once, from the path) and its context.
struct CallArrival: Sendable {
    var request: GRPCRequest
    /// nil for a path that is not one of ours.
    var method: KMSMethod?
    /// CLOCK_MONOTONIC nanoseconds.
    var arrived: UInt64
    var context: CallContext

    init(_ request: GRPCRequest, arrived: UInt64) {
        self.request = request
        self.method = KMSMethod(rawValue: request.path)
        self.arrived = arrived
        self.context = CallContext(deadline: request.timeoutNanos.map { arrived &+ $0 })
    }

    /// The metrics `op` label: our method, `other` for any other path.
    var metricsOp: KekdMetrics.Op { KekdMetrics.Op(method) }
    /// The audit record's `op`: our method's name, or the path as the client sent it.
    var auditOp: String { KMSMethod.auditOp(method, path: request.path) }
}

/// A check before any work: the status that answers the call instead, or nil to go on.
struct AdmissionStage: Sendable {
    let name: String
    let check: @Sendable (_ call: CallArrival, _ peer: PeerCredentials, _ now: UInt64) -> GRPCStatus?
}

/// After the work, where the outcome was produced (the connection's thread, or the pool thread that did the work):
/// may replace the outcome (a passed deadline, an audit record that could not be written in fail-closed mode). A
/// record that cannot veto goes into `deferred`, which the caller hands to the audit log after answering.
struct FinishingStage: Sendable {
    let name: String
    let apply: @Sendable (_ call: CallArrival, _ outcome: inout CallOutcome, _ who: CallParty, _ finished: UInt64,
                          _ deferred: inout AuditBatch) -> Void
}

/// Who made a call, for the audit record.
struct CallParty: Sendable {
    var peer: PeerCredentials
    var connection: UInt64
}

struct CallPipeline: Sendable {
    let admission: [AdmissionStage]
    let finishing: [FinishingStage]
    let execution: ExecutionPolicy
    let dispatcher: KMSDispatcher
    let metrics: KekdMetrics?
    let audit: AuditLog?
    let backendName: String

    init(configuration: ServerConfiguration, dispatcher: KMSDispatcher, audit: AuditLog?, metrics: KekdMetrics?) {
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.audit = audit
        self.backendName = dispatcher.service.backend.name
        self.execution = configuration.auditBlocksCalls ? .pool : configuration.execution
        admission = [Self.authorization(configuration), Self.deadlineBeforeWork]
        var finishing = [Self.deadlineAfterWork]
        if let audit { finishing.append(Self.auditRecord(audit, backendName: backendName, vetoes: configuration.auditBlocksCalls)) }
        self.finishing = finishing
    }

    /// The first admission stage that refuses, as the call's outcome; nil when the call may go on.
    func admit(_ call: CallArrival, peer: PeerCredentials, now: UInt64) -> CallOutcome? {
        guard let method = call.method else {
            return CallOutcome(method: nil, status: GRPCStatus(.unimplemented, "unknown method \(call.request.path)"))
        }
        for stage in admission {
            if let status = stage.check(call, peer, now) { return CallOutcome(method: method, status: status) }
        }
        return nil
    }

    /// Whether a decoded call runs on the connection's thread.
    func runsInline(_ call: DecodedCall) -> Bool {
        switch execution {
        case .inline: true
        case .pool: false
        case .askBackend: !dispatcher.wouldBlock(call)
        }
    }

    /// Best-effort audit records go into `deferred`: give it to `recordDeferred` once the answers are written.
    func finish(_ call: CallArrival, _ outcome: inout CallOutcome, who: CallParty, finished: UInt64,
                deferred: inout AuditBatch) {
        for stage in finishing { stage.apply(call, &outcome, who, finished, &deferred) }
    }

    func recordDeferred(_ batch: inout AuditBatch) {
        if !batch.isEmpty { audit?.record(&batch) }
    }

    /// Metrics of a call that reached the pipeline, after its answer was queued (or found its stream gone).
    func observe(_ call: CallArrival, code: GRPCStatusCode, finished: UInt64) {
        metrics?.callFinished(op: call.metricsOp, code: code, seconds: Double(finished &- call.arrived) / 1e9)
    }

    // MARK: - Stages

    /// Status for every admitted peer; Encrypt and Decrypt only for `allowedUIDs` (the listener admits only those
    /// and `statusOnlyUIDs`).
    static func authorization(_ configuration: ServerConfiguration) -> AdmissionStage {
        let allowed = configuration.allowedUIDs
        return AdmissionStage(name: "authorization") { call, peer, _ in
            guard call.method != .status, !allowed.contains(peer.uid) else { return nil }
            return GRPCStatus(.permissionDenied, "uid \(peer.uid) may call Status only (--status-only-uids)")
        }
    }

    /// DEADLINE_EXCEEDED when the client's deadline (grpc-timeout from arrival) has already passed: no work is done.
    static let deadlineBeforeWork = AdmissionStage(name: "deadline") { call, _, now in
        guard let timeout = call.request.timeoutNanos, now &- call.arrived >= timeout else { return nil }
        return GRPCStatus(.deadlineExceeded, "deadline of \(timeout / 1000) µs passed before the call started")
    }

    /// A call that finished after its client's deadline is DEADLINE_EXCEEDED: the client has stopped waiting.
    static let deadlineAfterWork = FinishingStage(name: "deadline") { call, outcome, _, finished, _ in
        guard let timeout = call.request.timeoutNanos, finished &- call.arrived > timeout, outcome.status.code == .ok else { return }
        outcome.status = GRPCStatus(.deadlineExceeded, "deadline of \(timeout / 1000) µs passed before the call finished")
        outcome.response = nil
    }

    /// Every call is recorded; in fail-closed mode a result that could not be recorded is never released. A
    /// best-effort record cannot change the answer, so it waits in `deferred` until the answer is on its way.
    static func auditRecord(_ audit: AuditLog, backendName: String, vetoes: Bool) -> FinishingStage {
        FinishingStage(name: "audit") { call, outcome, who, finished, deferred in
            let event = auditEvent(call.auditOp, outcome, who: who, streamID: call.request.streamID,
                                   arrived: call.arrived, finished: finished, backendName: backendName)
            guard vetoes else {
                deferred.append(event)
                return
            }
            if !audit.record(event) {
                outcome.status = GRPCStatus(.unavailable, "audit log unavailable; call refused (fail-closed)")
                outcome.response = nil
            }
        }
    }

    /// A call the gRPC layer refused before it reached the pipeline (bad headers, too large, unknown path).
    func recordRejected(path: String, streamID: UInt32, status: GRPCStatus, who: CallParty, now: UInt64) {
        let method = KMSMethod(rawValue: path)
        let metricsOp = KekdMetrics.Op(method)
        metrics?.callStarted(op: metricsOp)  // every finished call was started: in-flight stays exact
        metrics?.callFinished(op: metricsOp, code: status.code, seconds: 0)
        _ = audit?.record(Self.auditEvent(KMSMethod.auditOp(method, path: path), CallOutcome(method: method, status: status), who: who,
                                          streamID: streamID, arrived: now, finished: now, backendName: backendName))
    }

    static func auditEvent(_ op: String, _ outcome: CallOutcome, who: CallParty, streamID: UInt32, arrived: UInt64,
                           finished: UInt64, backendName: String) -> AuditEvent {
        // `finished` stands for now (read moments ago): one clock read fewer per call, an error below a microsecond.
        let wallArrival = Date(timeIntervalSinceNow: -Double(finished &- arrived) / 1e9)
        return AuditEvent(time: wallArrival, op: op, uid: outcome.uid, keyID: outcome.keyID, backend: outcome.backend ?? backendName,
                          outcome: outcome.status.code.name, message: outcome.status.code == .ok ? nil : outcome.status.message,
                          latencyMicros: Int64((finished &- arrived) / 1000),
                          peer: who.peer, connection: who.connection,
                          stream: streamID, ciphertext: outcome.ciphertext)
    }
}

extension KekdMetrics.Op {
    /// Our methods by name, every foreign path as `other` (a bounded label set).
    init(_ method: KMSMethod?) {
        switch method {
        case .status: self = .status
        case .encrypt: self = .encrypt
        case .decrypt: self = .decrypt
        case nil: self = .other
        }
    }
}
