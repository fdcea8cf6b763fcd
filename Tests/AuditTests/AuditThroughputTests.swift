// Throughput figures for the report, not a timed pass/fail test: run with KEKD_AUDIT_BENCH=1
// (e.g. `KEKD_AUDIT_BENCH=1 swift test -c release --filter AuditThroughput`). Prints records/s for 16 concurrent
// callers in each mode, writing to a file in /tmp (or KEKD_AUDIT_BENCH_DIR).
@testable import Audit
import Foundation
import Logging
import Testing

@Suite(.enabled(if: ProcessInfo.processInfo.environment["KEKD_AUDIT_BENCH"] != nil))
struct AuditThroughputTests {
    @Test(arguments: [AuditMode.bestEffort, .failClosed])
    func sixteenCallers(mode: AuditMode) throws {
        let base = ProcessInfo.processInfo.environment["KEKD_AUDIT_BENCH_DIR"] ?? "/tmp"
        let dir = base + "/kekd-audit-bench-\(getpid())-\(mode.rawValue)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { removeTree(dir) }
        let perCaller = mode == .bestEffort ? 20000 : 2000
        let log = try AuditLog(configuration: configuration(dir + "/audit.log", mode: mode, maxSize: 64 << 20,
                                                             queueCapacity: 1 << 16, usageFilePath: dir + "/usage.json"), log: quietLog)
        let event = sampleEvent(1, op: "Decrypt")
        let start = Date()
        onThreads(16) { _ in
            for _ in 0..<perCaller { _ = log.record(event) }
        }
        let enqueued = Date().timeIntervalSince(start)
        log.close()
        let total = Date().timeIntervalSince(start)
        let stats = log.stats
        let n = Double(16 * perCaller)
        print("audit throughput \(mode.rawValue): \(16 * perCaller) records, 16 callers: "
              + "record() \(Int(n / enqueued))/s, written \(stats.written) in \(String(format: "%.3f", total)) s "
              + "= \(Int(Double(stats.written) / total))/s, dropped \(stats.dropped), failed \(stats.failed), "
              + "records per fdatasync \(stats.syncs > 0 ? String(format: "%.1f", Double(stats.written) / Double(stats.syncs)) : "-")")
        #expect(stats.written + stats.dropped + stats.failed == 16 * perCaller)
    }
}
