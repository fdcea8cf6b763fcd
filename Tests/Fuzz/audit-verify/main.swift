// libFuzzer harness for the audit-log verifier behind `kekctl audit verify` (scripts/fuzz audit-verify SECONDS):
// `AuditVerifier.verify(bytes:name:hmacKey:cursor:report:)`, the per-file step `verify(files:)` runs, fed one or more
// files' contents through one cursor, oldest first, as a log and its rotated predecessors are.
//
// Input: one configuration octet, then the files' bytes separated by the marker FE FD FC (never in a log: records
// are ASCII). Configuration bit 0 ("re-chain"): before verifying, the harness rewrites every line's chain value to
// the HMAC the format (AuditRecordFormat.swift) prescribes, so mutations of seq, prev_chain, dropped_before, line
// order and file order get past the MAC into the chain and sequence rules. Without it, nearly every mutation stops
// at the first MAC.
//
// Beyond "never trap": a problem names a line of the file it is in; a clean report counts every line and a seq
// range as long as the record count; and (without re-chaining) a clean log with records fails once any one of its
// bytes is changed (the harness flips one, at a position picked from the input).
//
// `KEKD_FUZZ_WRITE_SEEDS=DIR .build-fuzz/audit-verify` writes seeds (logs written by AuditLog under this harness's
// key: single files, rotated sets, a restarted writer, a changed key) to DIR and exits.
import Audit
import Crypto
import Foundation
import Logging
import PeerIdentity

let marker: [UInt8] = [0xFE, 0xFD, 0xFC]
let hmacKey = [UInt8](repeating: 0x4B, count: 32)

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("audit-verify fuzz invariant: \(message())") }
}

func lineCount(_ bytes: [UInt8]) -> Int {
    bytes.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) } + (bytes.last.map { $0 == 0x0A ? 0 : 1 } ?? 0)
}

func verify(_ files: [[UInt8]]) -> AuditVerificationReport {
    var report = AuditVerificationReport()
    var cursor = AuditVerifier.Cursor()
    for (index, bytes) in files.enumerated() {
        let name = "log.\(files.count - 1 - index)"
        report.files.append(name)
        if let problem = AuditVerifier.verify(bytes: bytes, name: name, hmacKey: hmacKey, cursor: &cursor, report: &report) {
            check(problem.file == name, "problem names file \(problem.file), not \(name)")
            check(problem.line >= 1 && problem.line <= lineCount(bytes), "problem at line \(problem.line) of \(lineCount(bytes))")
            report.problem = problem
            return report
        }
    }
    return report
}

let chainField = Array(",\"chain\":\"".utf8)

/// Gives every line of the shape BODY,"chain":"<64 hex>"} the chain value HMAC(key, previous || BODY || "}"), where
/// previous is the line's own prev_chain when it has one, else the line before's chain (32 zero bytes at first).
func rechain(_ files: [[UInt8]]) -> [[UInt8]] {
    var previous = [UInt8](repeating: 0, count: 32)
    return files.map { file in
        var lines = file.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
        for i in lines.indices where lines[i].count > 76 + 8 {
            let bodyEnd = lines[i].count - 76
            guard lines[i][bodyEnd..<(bodyEnd + 10)].elementsEqual(chainField), lines[i].suffix(2) == [0x22, 0x7D] else { continue }
            let body = lines[i][..<bodyEnd]
            if let link = body.firstRange(of: Array(",\"prev_chain\":\"".utf8)), link.upperBound + 64 <= body.count,
               let bytes = hexBytes(body[link.upperBound..<(link.upperBound + 64)]) {
                previous = bytes
            }
            let chain = HMACSHA256.mac(key: hmacKey, message: previous + body + [0x7D])
            lines[i].replaceSubrange((bodyEnd + 10)..<(lines[i].count - 2), with: hexString(chain).utf8)
            previous = chain
        }
        return Array(lines.joined(separator: [0x0A]))
    }
}

func hexBytes(_ digits: ArraySlice<UInt8>) -> [UInt8]? {
    let bytes = stride(from: digits.startIndex, to: digits.endIndex, by: 2).map {
        UInt8(String(decoding: digits[$0...($0 + 1)], as: UTF8.self), radix: 16)
    }
    return bytes.contains(nil) ? nil : bytes.compactMap { $0 }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAuditVerify(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var files = input.split(separator: marker, omittingEmptySubsequences: false).map(Array.init)
    let rechained = data[0] & 1 != 0
    if rechained { files = rechain(files) }
    let report = verify(files)
    guard report.ok else { return 0 }
    check(report.records == files.reduce(0) { $0 + lineCount($1) }, "clean report counts \(report.records) records")
    guard report.records > 0, let first = report.firstSeq, let last = report.lastSeq else {
        check(report.firstSeq == nil && report.lastSeq == nil, "seq range without records")
        return 0
    }
    check(last >= first && (last - first).addingReportingOverflow(1) == (UInt64(report.records), false),
          "seq \(first)-\(last) for \(report.records) records")

    // Any one changed byte of a clean log must be caught.
    guard !rechained else { return 0 }
    let candidates = files.indices.filter { !files[$0].isEmpty }
    let pick = input.reduce(UInt64(size)) { $0 &* 31 &+ UInt64($1) }
    let fileIndex = candidates[Int(pick % UInt64(candidates.count))]
    var tampered = files
    let offset = Int((pick >> 16) % UInt64(files[fileIndex].count))
    tampered[fileIndex][offset] ^= UInt8(truncatingIfNeeded: pick >> 8) | 1
    check(!verify(tampered).ok, "a log with byte \(offset) of file \(fileIndex) changed still verifies")
    return 0
}

// MARK: Seeds

func writeLog(folder: String, name: String, maxSize: Int64, key: [UInt8] = hmacKey, events: [AuditEvent]) throws -> String {
    let path = folder + "/" + name
    let log = try AuditLog(configuration: AuditConfiguration(path: path, maxSize: maxSize, maxFiles: 9, mode: .failClosed, hmacKey: key,
                                                             allowNewChain: true),   // the key-changed seed starts a new chain
                           log: Logger { _ in })
    for event in events { check(log.record(event), "seed record not written") }
    log.close()
    return path
}

func sampleEvents(_ count: Int, start: Int = 0) -> [AuditEvent] {
    let peer = PeerCredentials(pid: 4242, uid: 0, gid: 0)
    return (start..<(start + count)).map { i in
        let time = Date(timeIntervalSince1970: 1_795_000_000 + Double(i) * 1.25)
        switch i % 5 {
        case 0: return AuditEvent(time: time, op: "Status", backend: "file", outcome: "OK", latencyMicros: 41, peer: peer, connection: 1, stream: 1)
        case 1: return AuditEvent(time: time, op: "Encrypt", uid: "2c5a1a43-6b5e-4d8e-9e0f-2f1b7c9d0a\(i)", keyID: "kekd-v3-343cb40974cb4e1d0e68ba5c",
                                  backend: "file", outcome: "OK", latencyMicros: 120, peer: peer, connection: 1, stream: UInt32(2 * i + 1),
                                  ciphertext: Array(repeating: UInt8(truncatingIfNeeded: i), count: 65))
        case 2: return AuditEvent(time: time, op: "Decrypt", uid: "uid-\(i)", keyID: "kekd-v2-9d271d909f1b6fc2d8a145ca", backend: "vault",
                                  outcome: "INVALID_ARGUMENT", message: "ciphertext failed authentication \"quoted\"\n\u{1}",
                                  latencyMicros: 9, peer: nil, connection: 2, stream: 3, ciphertext: [1, 2, 3])
        case 3: return AuditEvent(time: time, op: "/grpc.health.v1.Health/Check", backend: "file", outcome: "UNIMPLEMENTED",
                                  message: "unknown method", latencyMicros: 3, connection: UInt64.max, stream: UInt32.max)
        default: return AuditEvent(time: time, op: "Decrypt", uid: "ünïcødé-\(i)", keyID: "kekd-v3-343cb40974cb4e1d0e68ba5c", backend: "file",
                                   outcome: "OK", latencyMicros: Int64(i) * 1000, peer: PeerCredentials(pid: -1, uid: UInt32.max, gid: 7),
                                   connection: 3, stream: 5, ciphertext: [])
        }
    }
}

/// The log at `path` and its rotated predecessors, oldest first, joined by the marker.
func seedInput(_ path: String) throws -> [UInt8] {
    var out: [UInt8] = []
    for (i, file) in AuditVerifier.filesToVerify(path: path).enumerated() {
        out += (i > 0 ? marker : []) + [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
    }
    return out
}

func writeSeeds(to folder: String) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let scratch = NSTemporaryDirectory() + "kekd-fuzz-audit-\(getpid())"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    func write(_ name: String, _ bytes: [UInt8], expectOK: Bool) throws {
        let files = bytes.split(separator: marker, omittingEmptySubsequences: false).map(Array.init)
        check(verify(files).ok == expectOK, "seed \(name) does not verify as expected")
        check(rechain(files) == files || !expectOK, "seed \(name) changes when re-chained")
        try Data([0] + bytes).write(to: URL(fileURLWithPath: folder + "/" + name))
        try Data([1] + bytes).write(to: URL(fileURLWithPath: folder + "/" + name + "-rechained"))
    }
    try write("one-record", seedInput(writeLog(folder: scratch, name: "one", maxSize: 0, events: sampleEvents(1))), expectOK: true)
    try write("five-records", seedInput(writeLog(folder: scratch, name: "five", maxSize: 0, events: sampleEvents(5))), expectOK: true)
    try write("rotated-four-files", seedInput(writeLog(folder: scratch, name: "rot", maxSize: 900, events: sampleEvents(9))), expectOK: true)
    // A restarted writer continues the chain of the file it appends to.
    _ = try writeLog(folder: scratch, name: "restart", maxSize: 0, events: sampleEvents(3))
    let restarted = try seedInput(writeLog(folder: scratch, name: "restart", maxSize: 0, events: sampleEvents(2, start: 3)))
    try write("restarted-writer", restarted, expectOK: true)
    // Only the newest rotated files (older ones deleted): each file starts with prev_chain.
    let rotated = try seedInput(scratch + "/rot").split(separator: marker, omittingEmptySubsequences: false)
    try write("rotated-oldest-deleted", Array(rotated.suffix(2).joined(separator: marker)), expectOK: true)
    try write("rotated-out-of-order", Array([rotated[rotated.count - 1], rotated[rotated.count - 2]].joined(separator: marker)), expectOK: false)
    // A different chain key: the old file is rotated away and the new chain cannot verify under our key.
    _ = try writeLog(folder: scratch, name: "rekey", maxSize: 0, events: sampleEvents(2))
    try write("key-changed", seedInput(writeLog(folder: scratch, name: "rekey", maxSize: 0, key: [UInt8](repeating: 0x11, count: 32),
                                                events: sampleEvents(2, start: 2))), expectOK: false)
    var truncated = try seedInput(scratch + "/five")
    truncated.removeLast(30)
    try write("truncated-last-line", truncated, expectOK: false)
    try write("empty", [], expectOK: true)
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    if let folder = getenv("KEKD_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) {
        do { try writeSeeds(to: folder) } catch { fatalError("audit-verify fuzz: writing seeds: \(error)") }
        _exit(0)  // not exit(): LeakSanitizer would report Foundation's process-lifetime caches
    }
    return 0
}
