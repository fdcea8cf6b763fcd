// The writer thread: batches, the chain, rotation, failure rollback, loss reports, key usage.
import Crypto
import FoundationEssentials
import Locking
#if canImport(Glibc)
import Glibc
import Logging
#endif

/// The chain position after the last record in the sink.
struct ChainState {
    var seq: UInt64 = 0
    var chain: [UInt8] = AuditRecordFormat.genesisChain
    /// Records lost since the last written one; the next written record reports them as dropped_before.
    var unreportedDrops: UInt64 = 0
}

/// Owned by the writer thread after init; nothing else touches it.
final class AuditWriter: @unchecked Sendable {
    private let configuration: AuditConfiguration
    private let queue: AuditQueue
    private let counters: AuditCounters
    private let log: Logger
    private let sink: AuditSink
    private let chainMAC: HMACSHA256Context
    private var state = ChainState()
    private var usage: KeyUsageTracker
    /// One write(2) per batch, but never more than this many bytes in memory at once.
    private let maxWriteBytes = 4 << 20
    /// The batch's lines, reused between batches.
    private var writeBuffer: [UInt8] = []
    private var bodyCache = AuditRecordFormat.BodyCache()
    private var lossSinceLastLog = 0
    private var lastLossLog = 0.0
    private var lastLossReason = ""
    /// True when init rotated away a log written under another chain key (allowed by `allowNewChain`).
    private(set) var startedNewChain = false

    init(configuration: AuditConfiguration, queue: AuditQueue, counters: AuditCounters, log: Logger) throws {
        self.configuration = configuration
        self.log = log
        self.queue = queue
        self.counters = counters
        sink = AuditSink(path: configuration.path, maxSize: configuration.maxSize, maxFiles: configuration.maxFiles)
        chainMAC = HMACSHA256Context(key: configuration.hmacKey)
        try sink.open()
        usage = KeyUsageTracker(path: configuration.usageFilePath, log: log)
        // Continue the chain of the file we append to, or of its rotated predecessor when it is new.
        let last = !sink.isRegularFile ? nil
            : sink.size > 0 ? AuditSink.lastRecord(path: configuration.path)
            : AuditSink.lastRecord(path: configuration.path + ".1")
        if let (record, previous) = last, let previous,
           !constantTimeEqual(AuditRecordFormat.chain(key: configuration.hmacKey, previous: previous, body: record.body), record.chain) {
            // Written under another chain key (its key lost, or a new key file or --audit-hmac-key-file). Starting
            // a new chain silently would leave the old logs unverifiable and hide a cut: only when allowed. Then one
            // file, one key: the old file is rotated away intact and verifies with its own key.
            guard configuration.allowNewChain else {
                sink.close()
                throw AuditError("audit log \(configuration.path) was written with another chain key (the key is missing "
                                 + "or was replaced); restore it, or start a new chain with --audit-new-chain")
            }
            log.warn("the existing audit log was written with a different chain key; starting a new chain "
                     + "(--audit-new-chain), the old log is kept rotated", ["path": configuration.path])
            if sink.size > 0 && configuration.maxFiles > 0 { try sink.rotate() }
            startedNewChain = true
        } else if let (record, _) = last {
            state.seq = record.seq
            state.chain = record.chain
        } else if sink.size > 0 {
            log.error("existing audit log ends without a recognisable record; starting a new chain",
                      ["path": configuration.path])
        }
        counters.publishHead(state)
    }

    /// A batch this large came from a burst: its buffer is released and the heap trimmed once the queue drains.
    static let largeBatch = 512
    /// Enough records to write at once without waiting for more (best-effort).
    static let coalescedRecords = 64

    func run() {
        // A FIFO or pipe sink whose reader went away must give EPIPE (a failed write), not kill kekd: SIGPIPE
        // from write(2) is sent to the writing thread, so blocking it here is enough, whatever the process does.
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)
        var batch: [QueuedRecord] = []
        var nextUsageFlush = monotonicSeconds() + configuration.usageFlushInterval
        var trimDue = false
        var lastTrim = 0.0
        while true {
            queue.lock.lock()
            if trimDue && queue.pending.isEmpty && monotonicSeconds() - lastTrim >= 1 {
                // A burst filled the queue with thousands of records (each a few small allocations); once it has
                // drained, hand the freed pages back instead of keeping the burst's high-water mark resident for
                // good (issue 12: 1.4 M calls grew kekd by several MiB). At most once a second, only when idle.
                queue.lock.unlock()
                releaseFreeHeapMemory()
                lastTrim = monotonicSeconds()
                trimDue = false
                queue.lock.lock()
            }
            var wokeFromIdle = false
            while queue.pending.isEmpty && !queue.closing && !queue.reopenRequested && queue.droppedSinceLastBatch == 0 {
                wokeFromIdle = true
                queue.writerIdle = true
                // Idle, but a usage flush or a pending loss report may be due.
                let deadlines = [usage.dirty ? nextUsageFlush : nil, lossSinceLastLog > 0 ? lastLossLog + 1 : nil,
                                 trimDue ? lastTrim + 1 : nil]
                if let deadline = deadlines.compactMap({ $0 }).min() {
                    if monotonicSeconds() >= deadline { break }
                    queue.writerWake.wait(queue.lock, until: deadline)
                } else {
                    queue.writerWake.wait(queue.lock)
                }
            }
            queue.writerIdle = false
            if wokeFromIdle && configuration.mode == .bestEffort && !queue.closing && queue.pending.count < Self.coalescedRecords {
                // Best-effort records may wait a moment: a millisecond gathers the records of concurrent calls into
                // one write(2) (and spares their callers a wake-up each) instead of one per record. Callers do not
                // signal meanwhile (the writer is not idle); close() and reopen() do.
                queue.writerWake.wait(queue.lock, until: monotonicSeconds() + 0.001)
            }
            swap(&batch, &queue.pending)
            let queueDrops = queue.droppedSinceLastBatch
            queue.droppedSinceLastBatch = 0
            let droppedUsage = queue.droppedUsage
            if !droppedUsage.isEmpty { queue.droppedUsage = [:] }
            let reopen = queue.reopenRequested
            queue.reopenRequested = false
            let finishing = queue.closing && batch.isEmpty
            if queue.callersWaitingForRoom > 0 { queue.callerWake.broadcast() }
            queue.lock.unlock()

            for (keyID, record) in droppedUsage { usage.merge(keyID, record) }
            if queueDrops > 0 {
                state.unreportedDrops += UInt64(queueDrops)
                noteLoss(queueDrops, reason: "queue full")
            }
            if reopen { reopenSink() }
            if !batch.isEmpty {
                let results = write(batch)
                counters.publishHead(state)
                if configuration.mode == .failClosed {
                    queue.lock.lock()
                    for (item, ok) in zip(batch, results) {
                        item.waiter?.ok = ok
                        item.waiter?.done = true
                    }
                    queue.callerWake.broadcast()
                    queue.lock.unlock()
                }
                if batch.count >= Self.largeBatch {
                    batch = []  // the next swap hands the queue a small array, not the burst's capacity
                    trimDue = true
                } else {
                    batch.removeAll(keepingCapacity: true)
                }
            }
            if lossSinceLastLog > 0 { noteLoss(0, reason: lastLossReason) }
            if monotonicSeconds() >= nextUsageFlush {
                usage.flush()
                nextUsageFlush = monotonicSeconds() + configuration.usageFlushInterval
            }
            if finishing { break }
        }
        usage.flush()
        if lossSinceLastLog > 0 {
            lastLossLog = 0
            noteLoss(0, reason: lastLossReason)
        }
        if state.unreportedDrops > 0 {
            log.error("audit log closed with unreported lost records",
                      ["lost": String(state.unreportedDrops), "path": configuration.path])
        }
        sink.close()
        queue.lock.lock()
        queue.writerDone = true
        queue.callerWake.broadcast()
        queue.lock.unlock()
    }

    private func reopenSink() {
        do {
            try sink.open()
        } catch {
            counters.fail(error.message)
            log.error("cannot reopen audit log", ["error": error.message])
        }
    }

    /// Appends the line for `event` at the next chain position to `out`; returns the state after it (not yet
    /// applied).
    private func encode(_ event: borrowing AuditEvent, appendingTo out: inout [UInt8]) -> ChainState {
        let seq = state.seq + 1
        let start = out.count
        AuditRecordFormat.appendBody(of: event, seq: seq, prevChain: sink.openedNewFile ? state.chain : nil,
                                     droppedBefore: state.unreportedDrops, cache: &bodyCache, to: &out)
        let chain = AuditRecordFormat.chain(chainMAC, previous: state.chain, body: out[start...])
        AuditRecordFormat.appendChainSuffix(chain, to: &out)
        return ChainState(seq: seq, chain: chain, unreportedDrops: 0)
    }

    /// Writes the batch in as few segments as rotation and the memory cap allow; returns each record's fate.
    private func write(_ batch: [QueuedRecord]) -> [Bool] {
        // Through a buffer pointer, so each event is read in place: an array element's event went through a copy
        // (a retain and release of each of its strings) on its way to the encoder.
        batch.withUnsafeBufferPointer { write($0) }
    }

    private func write(_ batch: UnsafeBufferPointer<QueuedRecord>) -> [Bool] {
        var results = [Bool](repeating: false, count: batch.count)
        if usage.path != nil {
            for index in batch.indices {
                // Read apart from the mutating call, which would make the event a copy.
                if let (keyID, record) = KeyUsageTracker.usage(of: batch[index].event) { usage.note(keyID, record) }
            }
            usage.settle()
        }
        if !sink.isOpen || !sink.pathStillNamesOpenFile() {
            do {
                try sink.open()
            } catch {
                lose(batch.count, error: error.message)
                return results
            }
        }
        var segment = Segment(start: 0, checkpoint: state, openedNewFile: sink.openedNewFile, fileSize: sink.size)
        var buffer = writeBuffer
        writeBuffer = []
        defer {
            // Kept for the next batch unless a burst grew it.
            buffer.removeAll(keepingCapacity: buffer.capacity <= 64 << 10)
            writeBuffer = buffer
        }
        var index = 0
        while index < batch.count {
            let lineStart = buffer.count
            var next = encode(batch[index].event, appendingTo: &buffer)
            let lineCount = buffer.count - lineStart
            let rotate = sink.needsRotation(pending: lineStart, adding: lineCount)
            if rotate || buffer.count > maxWriteBytes {
                buffer.removeSubrange(lineStart...)
                commit(&segment, upTo: index, buffer: buffer, results: &results)
                buffer.removeAll(keepingCapacity: true)
                if sink.needsRotation(pending: 0, adding: lineCount) {
                    do {
                        try sink.rotate()
                    } catch {
                        lose(batch.count - index, error: error.message)
                        return results
                    }
                }
                segment = Segment(start: index, checkpoint: state, openedNewFile: sink.openedNewFile, fileSize: sink.size)
                next = encode(batch[index].event, appendingTo: &buffer)
            }
            state = next
            sink.openedNewFile = false
            index += 1
        }
        commit(&segment, upTo: batch.count, buffer: buffer, results: &results)
        return results
    }

    private struct Segment {
        var start: Int
        var checkpoint: ChainState
        var openedNewFile: Bool
        var fileSize: Int64
    }

    /// Writes (and in fail-closed mode syncs) one segment. On failure the file is cut back and the chain rolled
    /// back, so the chain in memory always matches the last record in the file.
    private func commit(_ segment: inout Segment, upTo end: Int, buffer: [UInt8], results: inout [Bool]) {
        let count = end - segment.start
        guard count > 0 else { return }
        var error = sink.write(buffer)
        if error == nil && configuration.mode == .failClosed {
            error = sink.sync()
            if error == nil { counters.syncs.add(1, ordering: .relaxed) }
        }
        guard let error else {
            for i in segment.start..<end { results[i] = true }
            counters.written.add(count, ordering: .relaxed)
            counters.writable.store(true, ordering: .relaxed)
            return
        }
        if !sink.truncate(to: segment.fileSize) && sink.isRegularFile {
            // The file may now end in a partial or unsynced record; the next record carries prev_chain so the
            // verifier can show exactly where the failure was.
            sink.openedNewFile = true
        } else {
            sink.openedNewFile = segment.openedNewFile
        }
        state = segment.checkpoint
        lose(count, error: "cannot write audit log \(configuration.path): \(POSIXFile.errorText(error))")
    }

    /// Records that did not reach the sink: refused (fail-closed) or dropped and reported (best-effort).
    private func lose(_ count: Int, error: String) {
        counters.fail(error)
        if configuration.mode == .failClosed {
            counters.failed.add(count, ordering: .relaxed)
        } else {
            counters.dropped.add(count, ordering: .relaxed)
            state.unreportedDrops += UInt64(count)
        }
        noteLoss(count, reason: error)
    }

    /// A loud stderr line, at most one per second (the counts in it and in dropped_before are exact).
    private func noteLoss(_ count: Int, reason: String) {
        lossSinceLastLog += count
        lastLossReason = reason
        guard lossSinceLastLog > 0 else { return }
        let now = monotonicSeconds()
        guard now - lastLossLog >= 1 else { return }
        lastLossLog = now
        let message = configuration.mode == .failClosed
            ? "audit records could not be written; their calls were refused"
            : "audit records dropped"
        log.error(message, ["count": String(lossSinceLastLog), "reason": reason,
                            "total_dropped": String(counters.dropped.load(ordering: .relaxed)),
                            "total_failed": String(counters.failed.load(ordering: .relaxed))])
        lossSinceLastLog = 0
    }
}
