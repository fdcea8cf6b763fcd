// The call pipeline's stages, each on its own: no socket, no threads.
import Audit
import Foundation
@testable import GRPC
import KMS
import KMSProto
import KMSRPC
import Logging
import Metrics
import Testing
import Transport
@testable import Server

private final class MemoryBackend: KeyBackend {
    let name = "memory"
    func wouldBlock(_ call: BackendCall) -> Bool { false }
    func status() -> BackendStatus { BackendStatus(healthy: true, keyID: "k1", detail: "") }
    func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        EncryptResult(ciphertext: plaintext, keyID: "k1", annotations: [:])
    }
    func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                 context: CallContext) throws(KMSError) -> [UInt8] { ciphertext }
    func reload() {}
    func close() {}
}

private let root = PeerCredentials(pid: 1, uid: 0, gid: 0)
private let stranger = PeerCredentials(pid: 2, uid: 4242, gid: 0)
private let party = CallParty(peer: root, connection: 1)

private func pipeline(_ configure: (inout ServerConfiguration) -> Void = { _ in }, audit: AuditLog? = nil,
                      metrics: KekdMetrics? = nil) -> CallPipeline {
    var config = ServerConfiguration(socketPath: "/unused")
    configure(&config)
    return CallPipeline(configuration: config, dispatcher: KMSDispatcher(service: KMSService(backend: MemoryBackend())),
                        audit: audit, metrics: metrics)
}

private func arrival(_ method: KMSMethod?, timeoutNanos: UInt64? = nil, arrived: UInt64 = 1_000_000_000) -> CallArrival {
    CallArrival(GRPCRequest(streamID: 1, path: method?.rawValue ?? "/other.Service/Call", message: [], timeoutNanos: timeoutNanos),
                arrived: arrived)
}

@Test func theMethodIsMatchedOnceAndOtherPathsAreNamedOneWay() {
    let ours = arrival(.decrypt)
    #expect(ours.method == .decrypt && ours.metricsOp == .decrypt && ours.auditOp == "Decrypt")
    let other = arrival(nil)
    #expect(other.method == nil && other.metricsOp == .other && other.auditOp == "/other.Service/Call")
    #expect(pipeline().admit(other, peer: root, now: other.arrived)?.status.code == .unimplemented)
    // The metrics label of each method is its name; another version's path is `other`, not its method name.
    for method in KMSMethod.allCases { #expect(KekdMetrics.Op(method).label == method.op) }
    let v1 = CallArrival(GRPCRequest(streamID: 1, path: "/v1beta1.KeyManagementService/Encrypt", message: [], timeoutNanos: nil), arrived: 1)
    #expect(v1.metricsOp == .other)
}

@Test func authorizationRefusesEncryptAndDecryptToStatusOnlyPeers() {
    let p = pipeline()
    for method in [KMSMethod.encrypt, .decrypt] {
        #expect(p.admit(arrival(method), peer: stranger, now: 1_000_000_000)?.status.code == .permissionDenied)
        #expect(p.admit(arrival(method), peer: root, now: 1_000_000_000) == nil)
    }
    #expect(p.admit(arrival(.status), peer: stranger, now: 1_000_000_000) == nil)
}

@Test func theDeadlineTravelsWithTheCallAndIsCheckedBeforeAndAfterWork() {
    let call = arrival(.decrypt, timeoutNanos: 500, arrived: 1_000)
    #expect(call.context.deadline == 1_500)
    let p = pipeline()
    #expect(p.admit(call, peer: root, now: 1_499) == nil)
    #expect(p.admit(call, peer: root, now: 1_500)?.status.code == .deadlineExceeded)
    var ok = CallOutcome(method: .decrypt, status: .ok, response: [1])
    var batch = AuditBatch()
    p.finish(call, &ok, who: party, finished: 1_400, deferred: &batch)
    #expect(ok.status.code == .ok && ok.response == [1])
    p.finish(call, &ok, who: party, finished: 1_600, deferred: &batch)
    #expect(ok.status.code == .deadlineExceeded && ok.response == nil, "a late answer is not released")
    var failed = CallOutcome(method: .decrypt, status: GRPCStatus(.invalidArgument, "bad"))
    p.finish(call, &failed, who: party, finished: 1_600, deferred: &batch)
    #expect(batch.isEmpty, "no audit log, no records")
    #expect(failed.status.code == .invalidArgument, "an error keeps its own code")
}

@Test(arguments: [false, true])
func anAuditRecordThatCannotBeWrittenVetoesTheAnswerOnlyWhenFailClosed(failClosed: Bool) throws {
    let key = [UInt8](repeating: 7, count: 32)
    let audit = try AuditLog(configuration: AuditConfiguration(path: "/dev/full", mode: failClosed ? .failClosed : .bestEffort,
                                                               hmacKey: key), log: Logger(minimumLevel: .error))
    defer { audit.close() }
    let p = pipeline({ $0.auditBlocksCalls = failClosed }, audit: audit)
    #expect(p.execution == (failClosed ? .pool : .askBackend), "a fail-closed audit log sends every call to the pool")
    var outcome = CallOutcome(method: .encrypt, status: .ok, response: [1])
    var batch = AuditBatch()
    p.finish(arrival(.encrypt), &outcome, who: party, finished: 1_000_000_100, deferred: &batch)
    if failClosed {
        #expect(outcome.status.code == .unavailable && outcome.response == nil)
        #expect(batch.isEmpty, "a record that may veto is written before the answer")
    } else {
        #expect(outcome.status.code == .ok && outcome.response == [1])
        #expect(batch.count == 1, "a best-effort record waits for the answer to be written")
    }
}

@Test func bestEffortRecordsAreWrittenWhenTheConnectionHandsThemOver() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kekd-pipeline-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let key = [UInt8](repeating: 7, count: 32)
    let audit = try AuditLog(configuration: AuditConfiguration(path: dir + "/audit.log", mode: .bestEffort, hmacKey: key),
                             log: Logger(minimumLevel: .error))
    let p = pipeline(audit: audit)
    var batch = AuditBatch()
    for (index, method) in [KMSMethod.status, .encrypt, .decrypt].enumerated() {
        var outcome = CallOutcome(method: method, status: .ok, response: [1])
        p.finish(arrival(method, arrived: 1_000 + UInt64(index)), &outcome, who: party, finished: 2_000, deferred: &batch)
    }
    #expect(batch.count == 3)
    p.recordDeferred(&batch)
    #expect(batch.isEmpty)
    audit.close()
    #expect(audit.stats.written == 3 && audit.stats.dropped == 0)
    let ops = try String(contentsOfFile: dir + "/audit.log", encoding: .utf8).split(separator: "\n").map {
        try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])["op"] as? String
    }
    #expect(ops == ["Status", "Encrypt", "Decrypt"])
}

@Test func metricsCountEveryCallByMethodAndCode() {
    let metrics = KekdMetrics(version: "test", backend: "memory")
    let p = pipeline(metrics: metrics)
    let call = arrival(.decrypt)
    metrics.callStarted(op: call.metricsOp)
    p.observe(call, code: .ok, finished: call.arrived + 1_000)
    p.recordRejected(path: "/other.Service/Call", streamID: 3, status: GRPCStatus(.unimplemented, "no"), who: party, now: 5)
    let text = metrics.render()
    #expect(text.contains(#"kekd_grpc_requests_total{op="Decrypt",code="OK"} 1"#))
    #expect(text.contains(#"kekd_grpc_requests_total{op="other",code="UNIMPLEMENTED"} 1"#))
}

@Test func theExecutionPolicyDecidesWhereACallRuns() {
    let decoded = DecodedCall.decrypt(DecryptRequest(ciphertext: [1], uid: "u", keyID: "k1", annotations: [:]))
    #expect(pipeline({ $0.execution = .inline }).runsInline(decoded))
    #expect(!pipeline({ $0.execution = .pool }).runsInline(decoded))
    #expect(pipeline({ $0.execution = .askBackend }).runsInline(decoded), "the memory backend never waits")
}
