// Replays the audit-verify fuzz corpus (Tests/Fuzz/corpus/audit-verify: logs written by AuditLog, and every input the
// fuzzer ever tripped on once fixed), so `swift test` keeps them as regression tests. Layout: a configuration octet,
// then the files' bytes, oldest first, separated by FE FD FC (Tests/Fuzz/audit-verify/main.swift). Seeds are real
// chains, so the harness's re-chain mode (bit 0) leaves them as they are.
import Audit
import Foundation
import Testing

@Suite struct AuditFuzzCorpusTests {
    static let folder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/audit-verify")
    /// The harness's chain key.
    static let hmacKey = [UInt8](repeating: 0x4B, count: 32)

    static func verify(_ input: [UInt8]) -> AuditVerificationReport {
        var report = AuditVerificationReport()
        var cursor = AuditVerifier.Cursor()
        for (i, file) in input.split(separator: [0xFE, 0xFD, 0xFC], omittingEmptySubsequences: false).enumerated() {
            if let problem = AuditVerifier.verify(bytes: Array(file), name: "file\(i)", hmacKey: hmacKey, cursor: &cursor, report: &report) {
                report.problem = problem
                break
            }
        }
        return report
    }

    @Test func corpusVerifiesAsNamed() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.folder.path).sorted()
        #expect(names.count >= 8, "the audit-verify seed corpus is missing")
        let clean: Set = ["empty", "five-records", "one-record", "restarted-writer", "rotated-four-files", "rotated-oldest-deleted"]
        for name in names {
            let input = [UInt8](try Data(contentsOf: Self.folder.appendingPathComponent(name)))
            let report = Self.verify(Array(input.dropFirst()))
            let seed = name.hasSuffix("-rechained") ? String(name.dropLast("-rechained".count)) : name
            #expect(report.ok == clean.contains(seed), "\(name): \(report.summary)")
            if let problem = report.problem { #expect(problem.line >= 1, "\(name): \(problem)") }
        }
        let rotated = Self.verify([UInt8](try Data(contentsOf: Self.folder.appendingPathComponent("rotated-four-files"))).dropFirst().map { $0 })
        #expect(rotated.records == 9 && rotated.firstSeq == 1 && rotated.lastSeq == 9, "\(rotated.summary)")
    }
}
