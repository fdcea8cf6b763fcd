// The verifier finds the first removed, altered, swapped or truncated record, at the right line.
@testable import Audit
import Foundation
import Testing

@Suite struct AuditVerifierTests {
    /// A verified 10-record log, its lines, and a scratch path for tampered copies.
    private func goodLog() throws -> (dir: String, lines: [String], tampered: String) {
        let dir = makeTempDirectory()
        let path = dir + "/audit.log"
        try writeRecords(path, count: 10)
        let report = AuditVerifier.verify(path: path, hmacKey: testKey)
        #expect(report.ok && report.records == 10, "\(report.summary)")
        return (dir, readLines(path), dir + "/tampered.log")
    }

    private func verify(_ lines: [String], at path: String, trailingNewline: Bool = true) -> AuditVerificationProblem? {
        writeLines(lines, to: path, trailingNewline: trailingNewline)
        return AuditVerifier.verify(files: [path], hmacKey: testKey).problem
    }

    @Test func removedRecord() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        var tampered = lines
        tampered.remove(at: 4)
        let problem = try #require(verify(tampered, at: path))
        #expect(problem.line == 5 && problem.file == path)
        #expect(problem.reason.contains("missing"), "\(problem)")
    }

    @Test func removedLastRecordIsUndetectableButFirstIsNot() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        // Cutting the start is detected (no anchor); cutting the end cannot be, by any chain.
        let problem = try #require(verify(Array(lines.dropFirst()), at: path))
        #expect(problem.line == 1 && problem.reason.contains("prev_chain"), "\(problem)")
        #expect(verify(Array(lines.dropLast()), at: path) == nil)
    }

    @Test func aCutTailIsDetectedAgainstAWitnessedHead() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        func chainHex(_ line: String) -> String { line.split(separator: "\"").dropLast().last.map(String.init) ?? "" }
        let head10 = String(chainHex(lines[9]).prefix(16)), head7 = String(chainHex(lines[6]).prefix(16))
        writeLines(lines, to: path)
        #expect(AuditVerifier.verify(files: [path], hmacKey: testKey, witness: AuditWitness(seq: 10, headHex: head10)).ok)
        // A witness from earlier still holds once the log has grown.
        #expect(AuditVerifier.verify(files: [path], hmacKey: testKey, witness: AuditWitness(seq: 7, headHex: head7.uppercased())).ok)

        writeLines(Array(lines.prefix(7)), to: path)
        #expect(AuditVerifier.verify(files: [path], hmacKey: testKey).ok)   // the chain alone cannot see it
        for witness in [AuditWitness(seq: 10), AuditWitness(headHex: head10), AuditWitness(seq: 10, headHex: head10)] {
            let report = AuditVerifier.verify(files: [path], hmacKey: testKey, witness: witness)
            let problem = try #require(report.problem)
            #expect(problem.line == 0 && problem.reason.contains("last seq seen 7"), "\(problem)")
        }
        // The seq is there but with another chain value: rewritten.
        let rewritten = try #require(AuditVerifier.verify(files: [path], hmacKey: testKey,
                                                          witness: AuditWitness(seq: 7, headHex: head10)).problem)
        #expect(rewritten.reason.contains("rewritten"), "\(rewritten)")
    }

    @Test func alteredRecord() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        var tampered = lines
        tampered[6] = tampered[6].replacingOccurrences(of: "\"op\":\"Encrypt\"", with: "\"op\":\"Decrypt\"")
        #expect(tampered[6] != lines[6])
        let problem = try #require(verify(tampered, at: path))
        #expect(problem.line == 7 && problem.reason.contains("altered"), "\(problem)")
    }

    @Test func alteredChainValue() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        var tampered = lines
        var bytes = Array(tampered[2].utf8)
        bytes[bytes.count - 5] = bytes[bytes.count - 5] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
        tampered[2] = String(decoding: bytes, as: UTF8.self)
        #expect(try #require(verify(tampered, at: path)).line == 3)
    }

    @Test func swappedRecords() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        var tampered = lines
        tampered.swapAt(3, 4)
        let problem = try #require(verify(tampered, at: path))
        #expect(problem.line == 4 && problem.reason.contains("out of order"), "\(problem)")
    }

    @Test func duplicatedRecord() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        var tampered = lines
        tampered.insert(lines[2], at: 3)
        #expect(try #require(verify(tampered, at: path)).line == 4)
    }

    @Test func truncatedLastLine() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        var tampered = lines
        tampered[9] = String(tampered[9].dropLast(10))
        let problem = try #require(verify(tampered, at: path, trailingNewline: false))
        #expect(problem.line == 10 && problem.reason.contains("truncated"), "\(problem)")
        // Only the newline missing: the record is whole but the write was cut.
        #expect(try #require(verify(lines, at: path, trailingNewline: false)).line == 10)
    }

    @Test func wrongKeyFailsOnTheFirstRecord() throws {
        let (dir, _, _) = try goodLog()
        defer { removeTree(dir) }
        let report = AuditVerifier.verify(path: dir + "/audit.log", hmacKey: [UInt8](repeating: 1, count: 32))
        #expect(report.problem?.line == 1 && report.problem?.reason.contains("wrong HMAC key") == true)
    }

    @Test func garbageLinesAndMissingFiles() throws {
        let (dir, lines, path) = try goodLog()
        defer { removeTree(dir) }
        #expect(try #require(verify(Array(lines[0..<3]) + ["", "x"] + Array(lines[3...]), at: path)).line == 4)
        #expect(try #require(verify(Array(lines[0..<3]) + ["\u{0}\u{FF}garbage"], at: path)).line == 4)
        let missing = AuditVerifier.verify(path: dir + "/nope.log", hmacKey: testKey)
        #expect(missing.problem?.line == 0)
        #expect(verify([], at: path, trailingNewline: false) == nil)
    }

    @Test func randomCorruptionNeverTraps() throws {
        let (dir, lines, _) = try goodLog()
        defer { removeTree(dir) }
        let good = Array((lines.joined(separator: "\n") + "\n").utf8)
        var generator = SystemRandomNumberGenerator()
        var failures = 0
        for _ in 0..<300 {
            var bytes = good
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let i = Int.random(in: 0..<bytes.count, using: &generator)
                bytes[i] = bytes[i] &+ UInt8.random(in: 1...255, using: &generator)
            }
            var cursor = AuditVerifier.Cursor()
            var report = AuditVerificationReport()
            if AuditVerifier.verify(bytes: bytes, name: "fuzz", hmacKey: testKey, cursor: &cursor, report: &report) != nil {
                failures += 1
            }
        }
        #expect(failures == 300, "every corrupted byte is detected")
    }
}
