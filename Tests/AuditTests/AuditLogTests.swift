// The writer: completeness under concurrency, rotation, restart, sinks, modes, key usage.
@testable import Audit
import Foundation
import Locking
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite struct AuditLogTests {
    /// `batched`: each thread hands its records over in batches of 7 (`record(_: inout AuditBatch)`, as a
    /// connection does with a turn's records) instead of one by one.
    @Test(arguments: [AuditMode.bestEffort, .failClosed], [false, true])
    func concurrentCallsProduceExactlyOneRecordEachInSeqOrder(mode: AuditMode, batched: Bool) throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        let log = try AuditLog(configuration: configuration(path, mode: mode), log: quietLog)
        let threads = 16, perThread = 250
        let allOK = Shared(true)
        onThreads(threads) { t in
            var batch = AuditBatch()
            for k in 0..<perThread {
                let ops = ["Status", "Encrypt", "Decrypt", "/v2.KeyManagementService/Bogus"]
                let outcome = k % 5 == 0 ? "INVALID_ARGUMENT" : "OK"
                let event = sampleEvent(t * 1000 + k, op: ops[k % 4], outcome: outcome)
                guard batched else {
                    if !log.record(event) { allOK.store(false) }
                    continue
                }
                batch.append(event)
                if batch.count == 7 || k == perThread - 1 {
                    log.record(&batch)
                    if !batch.isEmpty { allOK.store(false) }
                }
            }
        }
        log.close()
        #expect(allOK.load())
        #expect(log.stats.written == threads * perThread && log.stats.dropped == 0 && log.stats.failed == 0)
        if mode == .failClosed {
            // Group commit: concurrent callers share fdatasyncs.
            #expect(log.stats.syncs > 0 && log.stats.syncs < log.stats.written / 2, "\(log.stats)")
        } else {
            #expect(log.stats.syncs == 0)
        }
        let lines = readLines(path)
        #expect(lines.count == threads * perThread)
        var seen = Set<String>()
        for (index, line) in lines.enumerated() {
            let object = try #require(jsonObject(line), "line \(index + 1) is not JSON")
            #expect(object["seq"] as? Int == index + 1)
            seen.insert("\(object["connection"] ?? "")/\(object["stream"] ?? "")")
            #expect(object["backend"] as? String == "file")
            #expect((object["outcome"] as? String == "OK") == (object["message"] == nil))
        }
        #expect(seen.count == threads * perThread, "every call exactly once")
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok, "\(report.summary)")
        #expect(report.records == threads * perThread && report.lastSeq == UInt64(threads * perThread))
        #expect(fileMode(path) == 0o600)
    }

    @Test func aConnectionsBatchDoesNotKeepTheQueuesReservedArray() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let log = try AuditLog(configuration: configuration(dir + "/audit.log", queueCapacity: 4096), log: quietLog)
        var batch = AuditBatch()
        for round in 0..<50 {
            batch.append(sampleEvent(round))
            log.record(&batch)  // an empty queue swaps arrays with the batch
            #expect(batch.isEmpty && batch.records.capacity <= AuditLog.batchCapacityKept)
        }
        log.close()
        #expect(log.stats.written == 50)
    }

    @Test func rotationBySizeKeepsTheChainVerifiableAcrossFiles() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        try writeRecords(path, count: 100, maxSize: 4000, maxFiles: 50)
        let files = AuditVerifier.filesToVerify(path: path)
        #expect(files.count > 5)
        for file in files {
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? -1
            #expect(size > 0 && size <= 4000, "\(file) has \(size) bytes")
            #expect(fileMode(file) == 0o600)
        }
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok, "\(report.summary)")
        #expect(report.records == 100 && report.firstSeq == 1 && report.lastSeq == 100)

        // A rotated file missing from the middle breaks the link between its neighbours.
        try FileManager.default.removeItem(atPath: path + ".2")
        let broken = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(broken.problem?.file == path + ".1" && broken.problem?.line == 1)
        #expect(broken.problem?.reason.contains("prev_chain") == true)
    }

    @Test func oldRotatedFilesAreDeletedAndTheRestStillVerifies() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        try writeRecords(path, count: 100, maxSize: 2000, maxFiles: 2)
        #expect(AuditVerifier.filesToVerify(path: path) == [path + ".2", path + ".1", path])
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok, "\(report.summary)")
        #expect(report.lastSeq == 100 && report.records < 100 && (report.firstSeq ?? 0) > 1)
    }

    @Test func restartContinuesTheChain() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        try writeRecords(path, count: 5)
        try writeRecords(path, count: 5, start: 5)
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok && report.records == 10 && report.lastSeq == 10, "\(report.summary)")
    }

    @Test func aNewChainKeyIsRefusedUnlessANewChainIsAllowed() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        try writeRecords(path, count: 5)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        var config = configuration(path)
        config.hmacKey = [UInt8](repeating: 7, count: 32)
        // The old chain's key is gone: starting a new chain silently would make the old log unverifiable.
        #expect(throws: AuditError.self) { try AuditLog(configuration: config, log: quietLog) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
        #expect(!FileManager.default.fileExists(atPath: path + ".1"))

        config.allowNewChain = true
        let log = try AuditLog(configuration: config, log: quietLog)
        for i in 0..<3 { _ = log.record(sampleEvent(i)) }
        log.close()
        let old = AuditVerifier.verify(files: [path + ".1"], hmacKey: testKey)
        #expect(old.ok && old.records == 5, "\(old.summary)")
        let new = AuditVerifier.verify(files: [path], hmacKey: config.hmacKey)
        #expect(new.ok && new.records == 4 && new.firstSeq == 1, "\(new.summary)")
        // The new chain's first record says why it exists.
        let firstLine = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")[0]
        #expect(firstLine.contains("\"op\":\"\(AuditLog.newChainOp)\"") && firstLine.contains("--audit-new-chain"))
        // The same key again: the chain simply continues, with no second notice.
        let again = try AuditLog(configuration: config, log: quietLog)
        _ = again.record(sampleEvent(9))
        again.close()
        #expect(AuditVerifier.verify(files: [path], hmacKey: config.hmacKey).lastSeq == 5)
        #expect(!FileManager.default.fileExists(atPath: path + ".2"))
    }

    @Test func chainHeadFollowsTheLastRecordWritten() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        let log = try AuditLog(configuration: configuration(path, mode: .failClosed), log: quietLog)
        #expect(log.chainHead.lastSeq == 0 && log.chainHead.headHex == String(repeating: "0", count: 16))
        for i in 0..<4 { #expect(log.record(sampleEvent(i))) }
        let lastLine = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").last ?? ""
        let chainHex = lastLine.split(separator: "\"").dropLast().last.map(String.init) ?? ""
        #expect(log.chainHead.lastSeq == 4 && chainHex.count == 64 && chainHex.hasPrefix(log.chainHead.headHex))
        log.close()
        // A restarted writer reports the head of the file it continues.
        let reopened = try AuditLog(configuration: configuration(path), log: quietLog)
        #expect(reopened.chainHead.lastSeq == 4 && chainHex.hasPrefix(reopened.chainHead.headHex))
        reopened.close()
    }

    @Test func restartAfterACrashedPartialLineKeepsTheEvidence() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        try writeRecords(path, count: 5)
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"seq":6,"time":"2026-"#.utf8))
        handle.closeFile()
        try writeRecords(path, count: 2, start: 5)
        let lines = readLines(path)
        #expect(lines.count == 8)
        #expect(jsonObject(lines[6])?["seq"] as? Int == 6, "the chain continues after the last complete record")
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.problem?.line == 6)
    }

    @Test func externalRotationAndReopen() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        let log = try AuditLog(configuration: configuration(path, mode: .failClosed), log: quietLog)
        for i in 0..<3 { #expect(log.record(sampleEvent(i))) }
        #expect(rename(path, dir + "/audit.log.1") == 0)
        log.reopen()
        for i in 3..<6 { #expect(log.record(sampleEvent(i))) }
        log.close()
        #expect(readLines(path).count == 3)
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok && report.records == 6, "\(report.summary)")
    }

    @Test(arguments: [AuditMode.bestEffort, .failClosed])
    func devNullIsAValidSink(mode: AuditMode) throws {
        let log = try AuditLog(configuration: configuration("/dev/null", mode: mode), log: quietLog)
        for i in 0..<100 { #expect(log.record(sampleEvent(i))) }
        log.close()
        #expect(log.stats.written == 100 && log.stats.dropped == 0 && log.stats.failed == 0)
        #expect(log.isWritable)
    }

    @Test func failClosedReturnsFalseOnAFullDevice() throws {
        let log = try AuditLog(configuration: configuration("/dev/full", mode: .failClosed), log: quietLog)
        #expect(!log.record(sampleEvent(1)))
        #expect(!log.record(sampleEvent(2)))
        log.close()
        #expect(log.stats.failed == 2 && log.stats.written == 0)
        #expect(!log.isWritable && log.stats.lastError?.contains("No space") == true)
    }

    @Test func bestEffortCountsSinkFailuresAsDropsAndLogsThem() throws {
        let lines = LockedValue<[[UInt8]]>([])
        let log = try AuditLog(configuration: configuration("/dev/full", mode: .bestEffort),
                               log: Logger { line in lines.withLock { $0.append(line) } })
        for i in 0..<10 { #expect(log.record(sampleEvent(i))) }
        log.close()
        #expect(log.stats.dropped == 10 && log.stats.written == 0)
        // The operator sees the loss on the logger kekd configured, as one JSON line with the exact totals.
        let objects = lines.withLock { $0 }.compactMap { (try? JSONSerialization.jsonObject(with: Data($0))) as? [String: Any] }
        let drops = objects.filter { $0["msg"] as? String == "audit records dropped" }
        #expect(!drops.isEmpty)
        #expect(drops.allSatisfy { $0["level"] as? String == "error" && $0["component"] as? String == "audit" })
        #expect(drops.last?["total_dropped"] as? String == "10")
    }

    @Test func failClosedReturnsFalseWhenTheFolderIsRemovedAndRecovers() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit.log"
        let log = try AuditLog(configuration: configuration(path, mode: .failClosed), log: quietLog)
        #expect(log.record(sampleEvent(1)))
        removeTree(dir)
        #expect(!log.record(sampleEvent(2)))
        #expect(!log.isWritable)
        #expect(mkdir(dir, 0o700) == 0)
        #expect(log.record(sampleEvent(3)))
        log.close()
        #expect(log.isWritable)
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok && report.records == 1 && report.firstSeq == 2, "\(report.summary)")
    }

    /// `batched`: records handed over 25 at a time, so a batch finds less room than it needs and only its excess
    /// may be dropped (and counted).
    @Test(arguments: [false, true])
    func bestEffortNeverBlocksAndReportsDropsWhenTheQueueIsFull(batched: Bool) throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let fifo = dir + "/audit.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        #expect(reader >= 0)
        let log = try AuditLog(configuration: configuration(fifo, queueCapacity: 16), log: quietLog)
        // Nobody reads the FIFO: the writer blocks once the pipe buffer is full, the queue fills, and callers
        // must still return at once.
        let returnedTrue = Shared(true)
        let quick = finishes(within: 20) {
            var batch = AuditBatch()
            for i in 0..<20000 {
                guard batched else {
                    if !log.record(sampleEvent(i)) { returnedTrue.store(false) }
                    continue
                }
                batch.append(sampleEvent(i))
                if batch.count == 25 {
                    log.record(&batch)
                    if !batch.isEmpty { returnedTrue.store(false) }
                }
            }
        }
        #expect(quick, "record() blocked in best-effort mode")
        #expect(returnedTrue.load())
        let dropped = log.stats.dropped
        #expect(dropped > 0)
        // Drain the FIFO so the writer can finish, then the next record reports the loss.
        let drained = Shared(0)
        let stop = Shared(false)
        let drainer = Thread {
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            var all = [UInt8]()
            while true {
                let n = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
                if n > 0 { all.append(contentsOf: buffer[0..<n]); continue }
                if stop.load() { break }
                usleep(1000)
            }
            let text = String(decoding: all, as: UTF8.self)
            drained.store(text.components(separatedBy: "\"dropped_before\":").count - 1)
        }
        drainer.start()
        #expect(log.record(sampleEvent(99999)))
        #expect(finishes(within: 20) { log.close() })
        stop.store(true)
        usleep(200_000)
        close(reader)
        #expect(drained.load() >= 1, "a record after the loss carries dropped_before")
        #expect(log.stats.written + log.stats.dropped == 20001)
    }

    @Test func failClosedGivesUpOnAStuckSink() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let fifo = dir + "/audit.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        // No reader: opening fails at once instead of hanging.
        #expect(throws: AuditError.self) { try AuditLog(configuration: configuration(fifo), log: quietLog) }
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        var config = configuration(fifo, mode: .failClosed, queueCapacity: 4)
        config.failClosedTimeout = 0.3
        let log = try AuditLog(configuration: config, log: quietLog)
        // Nobody reads: the pipe fills, the writer blocks in write(2), and calls must fail instead of hanging.
        let refused = Shared(false)
        #expect(finishes(within: 30) {
            for i in 0..<2000 where !log.record(sampleEvent(i)) {
                refused.store(true)
                break
            }
        })
        #expect(refused.load())
        #expect(log.stats.failed >= 1 && !log.isWritable)
        #expect(finishes(within: 5) { log.close(timeout: 0.5) })
        // The reader goes away: the stuck write fails with EPIPE (no SIGPIPE kills the process) and the writer ends.
        close(reader)
        #expect(finishes(within: 5) { log.close(timeout: 4) })
        #expect(log.stats.lastError?.contains("Broken pipe") == true, "\(log.stats.lastError ?? "")")
    }

    @Test func keyUsageFileKeepsLastSuccessfulEncryptAndDecryptPerKey() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let usagePath = dir + "/usage.json"
        let t = { (s: Double) in Date(timeIntervalSince1970: 1_790_000_000 + s) }
        let log = try AuditLog(configuration: configuration(dir + "/audit.log", usageFilePath: usagePath), log: quietLog)
        _ = log.record(sampleEvent(1, op: "Encrypt", keyID: "A", time: t(10)))
        _ = log.record(sampleEvent(2, op: "Decrypt", keyID: "A", time: t(20)))
        _ = log.record(sampleEvent(3, op: "Decrypt", keyID: "A", outcome: "FAILED_PRECONDITION", time: t(30)))
        _ = log.record(sampleEvent(4, op: "Encrypt", keyID: "A", time: t(5)))   // older than the one we have
        _ = log.record(sampleEvent(5, op: "Encrypt", keyID: "B", time: t(40)))
        _ = log.record(sampleEvent(6, op: "Status", keyID: "C", time: t(50)))
        log.close()
        let usage = try KeyUsageFile.load(path: usagePath)
        #expect(Set(usage.keys) == ["A", "B"])
        #expect(abs((usage["A"]?.lastEncrypt?.timeIntervalSince(t(10))) ?? 99) < 1e-6)
        #expect(abs((usage["A"]?.lastDecrypt?.timeIntervalSince(t(20))) ?? 99) < 1e-6)
        #expect(abs((usage["B"]?.lastEncrypt?.timeIntervalSince(t(40))) ?? 99) < 1e-6)
        #expect(usage["B"]?.lastDecrypt == nil)
        #expect(fileMode(usagePath) == 0o600)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp") }
        #expect(leftovers.isEmpty, "atomic write leaves no temp files")
        let text = String(decoding: FileManager.default.contents(atPath: usagePath) ?? Data(), as: UTF8.self)
        #expect(text.contains(#""A":{"last_decrypt":"2026-09-21T14:13:40.000000000Z","last_encrypt":"2026-09-21T14:13:30.000000000Z"}"#))

        // A restart keeps what the file knew and adds to it.
        let again = try AuditLog(configuration: configuration(dir + "/audit.log", usageFilePath: usagePath), log: quietLog)
        _ = again.record(sampleEvent(7, op: "Decrypt", keyID: "B", time: t(60)))
        again.close()
        let merged = try KeyUsageFile.load(path: usagePath)
        #expect(merged["A"] == usage["A"])
        #expect(abs((merged["B"]?.lastDecrypt?.timeIntervalSince(t(60))) ?? 99) < 1e-6)
    }

    @Test func keyUsageFileIsFlushedPeriodically() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let usagePath = dir + "/usage.json"
        let log = try AuditLog(configuration: configuration(dir + "/audit.log", usageFilePath: usagePath,
                                                             usageFlushInterval: 0.1), log: quietLog)
        defer { log.close() }
        _ = log.record(sampleEvent(1, op: "Decrypt", keyID: "K"))
        var found = false
        for _ in 0..<100 where !found {
            usleep(50_000)
            found = (try? KeyUsageFile.load(path: usagePath))?["K"]?.lastDecrypt != nil
        }
        #expect(found, "usage file written without close")
    }

    @Test func keyUsageLoadRejectsGarbage() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/usage.json"
        for bad in ["", "{", "[]", #"{"keys":{"a":{"last_encrypt":"yesterday"}}}"#, #"{"keys":5}"#] {
            writeLines([bad], to: path)
            #expect(throws: (any Error).self) { try KeyUsageFile.load(path: path) }
        }
        writeLines([#"{"keys":{"a":{"last_decrypt":null},"b":{}}}"#], to: path)
        #expect(try KeyUsageFile.load(path: path) == ["a": KeyUsageRecord(), "b": KeyUsageRecord()])
        #expect(throws: (any Error).self) { try KeyUsageFile.load(path: dir + "/missing") }
    }

    @Test func rejectsBadConfiguration() {
        #expect(throws: AuditError.self) {
            try AuditLog(configuration: AuditConfiguration(path: "/dev/null", hmacKey: [1, 2, 3]), log: quietLog)
        }
        #expect(throws: AuditError.self) {
            try AuditLog(configuration: AuditConfiguration(path: "/nonexistent-dir/x/audit.log", hmacKey: testKey), log: quietLog)
        }
    }
}
