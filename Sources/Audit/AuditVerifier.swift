// Checks an audit log and its rotated predecessors: every line a chained record, seq without gaps, every chain
// value right, files linked by prev_chain. Reports the first problem. Reads untrusted bytes: never traps.
import Crypto
import FoundationEssentials
import Glibc

public struct AuditVerificationProblem: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// 1-based line number in `file` (0: the file itself).
    public var line: Int
    public var reason: String
    public var description: String { line > 0 ? "\(file):\(line): \(reason)" : "\(file): \(reason)" }
}

/// What an off-node witness saw of the chain head (kekd's `kekd_audit_last_seq` and `kekd_audit_chain_head_info`).
/// The chain proves that no record was altered, removed or inserted *between* others, but a log cut at its end is
/// still a valid chain: only a head seen earlier, somewhere else, shows the cut.
public struct AuditWitness: Sendable, Equatable {
    /// A seq the log must still contain.
    public var seq: UInt64?
    /// Lowercase hex prefix of a chain value the log must still contain (at `seq`, when given).
    public var headHex: String?

    public init(seq: UInt64? = nil, headHex: String? = nil) {
        self.seq = seq
        self.headHex = headHex?.lowercased()
    }
}

public struct AuditVerificationReport: Sendable, Equatable {
    /// Oldest first.
    public var files: [String] = []
    public var records = 0
    public var firstSeq: UInt64?
    public var lastSeq: UInt64?
    /// Sum of dropped_before: records the writer reported lost (best-effort mode) before writing.
    public var reportedDropped: UInt64 = 0
    /// nil when everything verified.
    public var problem: AuditVerificationProblem?
    /// Checked after the chain verified (set before verifying).
    public var witness: AuditWitness?
    /// The chain value (hex) of the record at `witness.seq`.
    public var chainHexAtWitnessedSeq: String?
    /// The seq of the first record whose chain value starts with `witness.headHex`.
    public var seqWithWitnessedHead: UInt64?
    public var ok: Bool { problem == nil }

    public init() {}

    public var summary: String {
        if let problem { return "audit log verification FAILED at \(problem)" }
        var s = "ok: \(records) records verified"
        if let firstSeq, let lastSeq { s += " (seq \(firstSeq)-\(lastSeq))" }
        s += " in \(files.count) file\(files.count == 1 ? "" : "s")"
        if reportedDropped > 0 { s += "; the writer reported \(reportedDropped) records dropped before writing" }
        if let witness {
            s += "; witnessed" + (witness.seq.map { " seq \($0)" } ?? "") + (witness.headHex.map { " head \($0)" } ?? "") + " found"
        }
        return s
    }

    /// Why the verified log does not contain what the witness saw, or nil.
    func witnessProblem() -> String? {
        guard let witness else { return nil }
        let last = lastSeq.map { "last seq seen \($0)" } ?? "no records"
        if let seq = witness.seq {
            guard let chainHex = chainHexAtWitnessedSeq else {
                return "seq \(seq) was witnessed but the log does not contain it (\(last)): records were cut off the end"
            }
            if let head = witness.headHex, !chainHex.hasPrefix(head) {
                return "the record at seq \(seq) has chain head \(chainHex.prefix(16)), not the witnessed \(head) "
                    + "(\(last)): the log was rewritten"
            }
        } else if let head = witness.headHex, seqWithWitnessedHead == nil {
            return "no record has the witnessed chain head \(head) (\(last)): records were cut off the end or rewritten"
        }
        return nil
    }
}

public enum AuditVerifier {
    /// `path` and its rotated predecessors PATH.1, PATH.2, … (every PATH.<n> in the folder), oldest first.
    public static func filesToVerify(path: String) -> [String] {
        let dir = POSIXFile.directory(of: path)
        let base = path.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? path
        var rotated: [(Int, String)] = []
        if let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
            for name in names where name.hasPrefix(base + ".") {
                let suffix = name.dropFirst(base.count + 1)
                if !suffix.isEmpty, suffix.count <= 6, suffix.allSatisfy(\.isASCII), let n = Int(suffix), n > 0,
                   String(n) == suffix {
                    rotated.append((n, path + "." + suffix))
                }
            }
        }
        return rotated.sorted { $0.0 > $1.0 }.map(\.1) + [path]
    }

    /// Verifies `path` and its rotated predecessors as one chain.
    public static func verify(path: String, hmacKey: [UInt8], witness: AuditWitness? = nil) -> AuditVerificationReport {
        verify(files: filesToVerify(path: path), hmacKey: hmacKey, witness: witness)
    }

    /// Verifies the given files, oldest first, as one chain; then, when given, that it still holds what `witness` saw.
    public static func verify(files: [String], hmacKey: [UInt8], witness: AuditWitness? = nil) -> AuditVerificationReport {
        var report = AuditVerificationReport()
        report.witness = witness
        var cursor = Cursor()
        for file in files {
            report.files.append(file)
            let bytes: [UInt8]
            do {
                bytes = try POSIXFile.read(path: file)
            } catch {
                report.problem = AuditVerificationProblem(file: file, line: 0, reason: error.message)
                return report
            }
            if let problem = verify(bytes: bytes, name: file, hmacKey: hmacKey, cursor: &cursor, report: &report) {
                report.problem = problem
                return report
            }
        }
        if let reason = report.witnessProblem() {
            report.problem = AuditVerificationProblem(file: files.last ?? "", line: 0, reason: reason)
        }
        return report
    }

    /// Where the chain stands between lines and files.
    public struct Cursor: Sendable {
        var chain: [UInt8]?
        var nextSeq: UInt64?
        public init() {}
    }

    /// Verifies one file's bytes, continuing from `cursor`; returns the first problem. Public for fuzzing.
    public static func verify(bytes: [UInt8], name: String, hmacKey: [UInt8], cursor: inout Cursor,
                              report: inout AuditVerificationReport) -> AuditVerificationProblem? {
        let lines = splitLines(bytes)
        for (index, line) in lines.enumerated() {
            let lineNumber = index + 1
            func problem(_ reason: String) -> AuditVerificationProblem {
                AuditVerificationProblem(file: name, line: lineNumber, reason: reason)
            }
            let isUnterminatedLast = index == lines.count - 1 && bytes.last != 0x0A
            guard let record = AuditLineParser.parse(line) else {
                return problem(isUnterminatedLast ? "truncated last line (incomplete record, no newline)"
                                                  : "malformed line: not a chained audit record")
            }
            if isUnterminatedLast { return problem("truncated last line (record has no terminating newline)") }
            let previous: [UInt8]
            if let link = record.prevChain {
                if let current = cursor.chain, !constantTimeEqual(link, current) {
                    return problem("prev_chain does not match the preceding record's chain: records are missing "
                        + "before this one, files are out of order, or the writer restarted after a failure")
                }
                previous = link
            } else if let current = cursor.chain {
                previous = current
            } else if record.seq == 1 {
                previous = AuditRecordFormat.genesisChain
            } else {
                return problem("first record (seq \(record.seq)) has no prev_chain: the start of this file was removed")
            }
            if let expected = cursor.nextSeq, record.seq != expected {
                if record.seq > expected, let later = findSeq(expected, in: lines, after: index) {
                    return problem("record out of order: expected seq \(expected), found seq \(record.seq) "
                        + "(seq \(expected) is at line \(later + 1))")
                }
                if record.seq > expected {
                    return problem("expected seq \(expected), found seq \(record.seq): "
                        + "\(record.seq - expected) record(s) missing (or this record's seq was altered)")
                }
                return problem("record out of order or repeated: expected seq \(expected), found seq \(record.seq)")
            }
            let mac = AuditRecordFormat.chain(key: hmacKey, previous: previous, body: record.body)
            guard constantTimeEqual(mac, record.chain) else {
                return problem(report.records == 0
                    ? "chain value does not verify: wrong HMAC key, or the record was altered"
                    : "record altered: chain value does not verify")
            }
            cursor.chain = record.chain
            if let witness = report.witness {
                if record.seq == witness.seq { report.chainHexAtWitnessedSeq = hexString(record.chain) }
                if let head = witness.headHex, report.seqWithWitnessedHead == nil, hexString(record.chain).hasPrefix(head) {
                    report.seqWithWitnessedHead = record.seq
                }
            }
            let (next, wrapped) = record.seq.addingReportingOverflow(1)
            cursor.nextSeq = wrapped ? nil : next
            report.records += 1
            report.firstSeq = report.firstSeq ?? record.seq
            report.lastSeq = record.seq
            let (sum, overflow) = report.reportedDropped.addingReportingOverflow(record.droppedBefore)
            report.reportedDropped = overflow ? UInt64.max : sum
        }
        return nil
    }

    /// Verifies the last `records` records of one file (`kekctl doctor`): the record just before them is trusted
    /// only as the anchor of the chain (its chain value and seq), so a long log costs its tail and `records` MACs.
    public static func verifyTail(path: String, hmacKey: [UInt8], records: Int) -> AuditVerificationReport {
        var report = AuditVerificationReport()
        report.files = [path]
        let bytes: [UInt8], linesBefore: Int
        do {
            // One more line than asked for: the anchor of the chain.
            (bytes, linesBefore) = try POSIXFile.readTail(path: path, lines: max(records, 1) + 1)
        } catch {
            report.problem = AuditVerificationProblem(file: path, line: 0, reason: error.message)
            return report
        }
        // kekd may be appending right now: a last line without its newline is a record being written, not damage.
        let complete = bytes.lastIndex(of: 0x0A).map { Array(bytes[...$0]) } ?? []
        let lines = splitLines(complete)
        let first = max(0, lines.count - max(records, 1))
        var cursor = Cursor()
        if first > 0 {
            guard let anchor = AuditLineParser.parse(lines[first - 1]) else {
                report.problem = AuditVerificationProblem(file: path, line: linesBefore + first,
                                                          reason: "malformed line: not a chained audit record")
                return report
            }
            cursor.chain = anchor.chain
            cursor.nextSeq = anchor.seq &+ 1
        }
        let start = first > 0 ? lines[first].startIndex : 0
        if let problem = verify(bytes: Array(complete[start...]), name: path, hmacKey: hmacKey, cursor: &cursor, report: &report) {
            report.problem = AuditVerificationProblem(file: path, line: problem.line + linesBefore + first, reason: problem.reason)
        }
        return report
    }

    /// Lines without their newline; a final line without one is kept (and reported as truncated).
    private static func splitLines(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        if bytes.last == 0x0A || bytes.isEmpty { lines.removeLast() }
        return lines
    }

    private static func findSeq(_ seq: UInt64, in lines: [ArraySlice<UInt8>], after index: Int) -> Int? {
        var i = index + 1
        while i < lines.count {
            if let r = AuditLineParser.parse(lines[i]), r.seq == seq { return i }
            i += 1
        }
        return nil
    }
}
