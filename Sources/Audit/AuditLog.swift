// The audit log: callers enqueue events into a bounded queue; one writer thread turns them into chained lines,
// writes each batch with one write(2) and, in fail-closed mode, one fdatasync (group commit).
import FoundationEssentials
import Glibc
import Locking
import Logging
import Synchronization

/// A fail-closed caller's slot: set by the writer under the queue lock once the record's fate is known.
final class RecordWaiter: @unchecked Sendable {
    var done = false
    var ok = false
}

struct QueuedRecord {
    var event: AuditEvent
    var waiter: RecordWaiter?
}

/// Records gathered by one thread and handed to the log together (`AuditLog.record(_:)`): a connection collects
/// the best-effort records of the calls it answers in one turn and enqueues them after the answers are written,
/// under one lock, and usually without copying them (the batch's array becomes the queue's when that is empty).
public struct AuditBatch {
    var records: [QueuedRecord] = []

    public init() {}

    public var isEmpty: Bool { records.isEmpty }
    public var count: Int { records.count }

    public mutating func append(_ event: consuming AuditEvent) {
        records.append(QueuedRecord(event: event, waiter: nil))
    }
}

/// What callers and the writer share; every field is guarded by `lock`.
final class AuditQueue: @unchecked Sendable {
    let lock = MonitorLock()
    /// Wakes the writer (new records, reopen, close).
    let writerWake = MonitorCondition()
    /// Wakes callers (queue room, records done, writer finished).
    let callerWake = MonitorCondition()
    var pending: [QueuedRecord] = []
    var writerIdle = false
    var closing = false
    /// True until the writer thread starts (so close() after a failed init returns at once) and after it ends.
    var writerDone = true
    var reopenRequested = false
    var callersWaitingForRoom = 0
    /// best-effort drops on a full queue since the writer last looked, and the key usage they carried.
    var droppedSinceLastBatch = 0
    var droppedUsage: [String: KeyUsageRecord] = [:]

    /// A best-effort record refused for want of room: counted for the writer's loss report, and its key usage kept
    /// when there is a usage file (`keepingUsage`). The caller holds `lock`.
    func noteDropped(_ event: borrowing AuditEvent, keepingUsage: Bool) {
        droppedSinceLastBatch += 1
        if keepingUsage, let (keyID, usage) = KeyUsageTracker.usage(of: event) {
            droppedUsage[keyID, default: KeyUsageRecord()].merge(usage)
        }
    }

    /// The caller holds `lock`.
    func wakeWriterIfIdle() {
        if writerIdle {
            writerIdle = false
            writerWake.signal()
        }
    }
}

/// Counters readable from any thread.
final class AuditCounters: Sendable {
    let written = Atomic<Int>(0)
    let dropped = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let syncs = Atomic<Int>(0)
    let writable = Atomic<Bool>(true)
    let lastError = LockedValue<String?>(nil)
    /// seq of the last record in the sink and the first 8 bytes of its chain value (big-endian).
    let head = LockedValue<(seq: UInt64, chainPrefix: UInt64)>((0, 0))

    func publishHead(_ state: ChainState) {
        let prefix = state.chain.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        head.withLock { $0 = (state.seq, prefix) }
    }

    func fail(_ message: String) {
        writable.store(false, ordering: .relaxed)
        lastError.withLock { $0 = message }
    }
}

public final class AuditLog: Sendable {
    public let configuration: AuditConfiguration
    private let queue = AuditQueue()
    private let counters = AuditCounters()
    private let log: Logger

    /// Opens the sink (throwing when it cannot be opened), continues the chain of an existing file, and starts
    /// the writer thread. `log` gets the conditions an operator must see (lost records, an unwritable sink), each
    /// line with `"component":"audit"`.
    public init(configuration: AuditConfiguration, log: Logger) throws {
        guard configuration.hmacKey.count >= 16 else { throw AuditError("audit HMAC key must be at least 16 bytes") }
        guard configuration.queueCapacity >= 1 else { throw AuditError("audit queue capacity must be at least 1") }
        guard configuration.maxSize >= 0, configuration.maxFiles >= 0 else {
            throw AuditError("audit max size and max files must not be negative")
        }
        guard configuration.usageFlushInterval > 0, configuration.failClosedTimeout > 0 else {
            throw AuditError("usage flush interval and fail-closed timeout must be positive")
        }
        self.configuration = configuration
        self.log = log.with(["component": "audit"])
        let writer = try AuditWriter(configuration: configuration, queue: queue, counters: counters, log: self.log)
        queue.pending.reserveCapacity(min(configuration.queueCapacity, 1 << 16))
        let newChain = writer.startedNewChain
        queue.writerDone = false
        startThread(name: "kekd-audit") { writer.run() }
        if newChain {
            _ = record(AuditEvent(time: Date(), op: Self.newChainOp, backend: "", outcome: "OK",
                                  message: "new audit chain started (--audit-new-chain): the previous log was written "
                                      + "with a chain key kekd no longer has; it is kept rotated and verifies only with that key",
                                  latencyMicros: 0))
        }
    }

    /// `op` of the first record of a chain started because the previous chain's key was missing or replaced.
    public static let newChainOp = "AuditNewChain"

    /// The last record written: its seq and a 16-hex prefix of its chain value (seq 0, all zeros: none yet). An
    /// off-node witness of these (kekd exports them as metrics) lets `kekctl audit verify --expect-seq/--expect-head`
    /// detect records cut off the end, which the chain alone cannot.
    public var chainHead: (lastSeq: UInt64, headHex: String) {
        let (seq, prefix) = counters.head.withLock { $0 }
        let hex = String(prefix, radix: 16)
        return (seq, String(repeating: "0", count: 16 - hex.count) + hex)
    }

    deinit { close() }

    /// best-effort: enqueue, never block, return true (a drop is counted and reported). fail-closed: block until
    /// the record is written and flushed (fsync batched across concurrent callers); false if it could not be.
    public func record(_ event: consuming AuditEvent) -> Bool {
        let q = queue
        q.lock.lock()
        if configuration.mode == .bestEffort {
            if q.closing || q.pending.count >= configuration.queueCapacity {
                q.noteDropped(event, keepingUsage: configuration.usageFilePath != nil)
                q.wakeWriterIfIdle()
                q.lock.unlock()
                counters.dropped.add(1, ordering: .relaxed)
                return true
            }
            q.pending.append(QueuedRecord(event: event, waiter: nil))
            q.wakeWriterIfIdle()
            q.lock.unlock()
            return true
        }
        let deadline = monotonicSeconds() + configuration.failClosedTimeout
        while q.pending.count >= configuration.queueCapacity && !q.closing && monotonicSeconds() < deadline {
            q.callersWaitingForRoom += 1
            q.callerWake.wait(q.lock, until: deadline)
            q.callersWaitingForRoom -= 1
        }
        if q.closing || q.pending.count >= configuration.queueCapacity {
            q.lock.unlock()
            refuse(reason: q.closing ? "audit log is closed" : "audit queue stayed full")
            return false
        }
        let waiter = RecordWaiter()
        q.pending.append(QueuedRecord(event: event, waiter: waiter))
        q.wakeWriterIfIdle()
        while !waiter.done && monotonicSeconds() < deadline { q.callerWake.wait(q.lock, until: deadline) }
        let done = waiter.done, ok = waiter.ok
        q.lock.unlock()
        if !done {
            // The record may still be written later; the call is refused either way, which is the safe side.
            refuse(reason: "audit record not synced within \(configuration.failClosedTimeout) s")
        }
        return done && ok
    }

    /// Enqueues a batch and empties it (its capacity is kept for the next). best-effort: one lock for all, each
    /// record that finds the queue full a drop, as `record` counts it. fail-closed: `record` one by one (a caller
    /// that needs the veto records each call itself before answering it).
    public func record(_ batch: inout AuditBatch) {
        guard !batch.records.isEmpty else { return }
        guard configuration.mode == .bestEffort else {
            for index in batch.records.indices { _ = record(batch.records[index].event) }
            batch.records.removeAll(keepingCapacity: true)
            return
        }
        let q = queue
        q.lock.lock()
        let room = q.closing ? 0 : max(0, configuration.queueCapacity - q.pending.count)
        let dropped = max(0, batch.records.count - room)
        if dropped > 0 {
            for index in (batch.records.count - dropped)..<batch.records.count {
                q.noteDropped(batch.records[index].event, keepingUsage: configuration.usageFilePath != nil)
            }
            batch.records.removeLast(dropped)
        }
        if q.pending.isEmpty {
            swap(&q.pending, &batch.records)  // no copy: the writer left an empty array with capacity
        } else {
            q.pending.append(contentsOf: batch.records)
        }
        q.wakeWriterIfIdle()
        q.lock.unlock()
        // A swap may have handed this batch the queue's reserved or a burst's array: a connection keeps only a
        // turn's worth of capacity, not that.
        if batch.records.capacity > Self.batchCapacityKept {
            batch.records = []
        } else {
            batch.records.removeAll(keepingCapacity: true)
        }
        if dropped > 0 { counters.dropped.add(dropped, ordering: .relaxed) }
    }

    /// More records than a connection answers in one turn at full load.
    static let batchCapacityKept = 256

    private func refuse(reason: String) {
        counters.failed.add(1, ordering: .relaxed)
        counters.fail(reason)
    }

    /// SIGHUP: reopen the path (after an external rotation). Asynchronous; the next batch goes to the new file.
    public func reopen() {
        queue.lock.lock()
        queue.reopenRequested = true
        queue.writerIdle = false
        queue.writerWake.signal()
        queue.lock.unlock()
    }

    public var stats: AuditStats {
        queue.lock.lock()
        let depth = queue.pending.count
        queue.lock.unlock()
        return AuditStats(written: counters.written.load(ordering: .relaxed),
                          dropped: counters.dropped.load(ordering: .relaxed),
                          failed: counters.failed.load(ordering: .relaxed),
                          queueDepth: depth,
                          syncs: counters.syncs.load(ordering: .relaxed),
                          lastError: counters.lastError.withLock { $0 })
    }

    /// False after the last write, sync or open failed, until one succeeds (for /readyz).
    public var isWritable: Bool { counters.writable.load(ordering: .relaxed) }

    /// Writes everything queued, flushes the usage file, stops the writer. Later records are refused
    /// (fail-closed) or counted as dropped (best-effort). Idempotent. Waits at most `timeout` seconds for a
    /// writer stuck on its sink (then logs and returns; the process is shutting down).
    public func close(timeout: Double = 30) {
        let q = queue
        let deadline = monotonicSeconds() + timeout
        q.lock.lock()
        q.closing = true
        q.writerIdle = false
        q.writerWake.signal()
        q.callerWake.broadcast()
        while !q.writerDone && monotonicSeconds() < deadline { q.callerWake.wait(q.lock, until: deadline) }
        let finished = q.writerDone
        q.lock.unlock()
        if !finished {
            log.error("audit writer did not finish within the close timeout; queued records may be lost",
                      ["path": configuration.path])
        }
    }
}
