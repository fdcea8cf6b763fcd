// Shared helpers for the audit tests: temp folders, events, reading lines back.
@testable import Audit
import Foundation
import Logging
import PeerIdentity
import Locking
#if canImport(Glibc)
import Glibc
#endif

let testKey = [UInt8](repeating: 0x42, count: 32)

/// The logger of tests that do not look at log lines.
let quietLog = Logger { _ in }

func makeTempDirectory() -> String {
    var template = Array("/tmp/kekd-audit-test.XXXXXX".utf8CString)
    let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(result != nil, "mkdtemp failed")
    return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

func sampleEvent(_ i: Int, op: String = "Encrypt", keyID: String? = "k1", outcome: String = "OK",
                 time: Date = Date(timeIntervalSince1970: 1_790_000_000)) -> AuditEvent {
    AuditEvent(time: time, op: op, uid: "uid-\(i)", keyID: keyID, backend: "file", outcome: outcome,
               message: outcome == "OK" ? nil : "failed \(i)", latencyMicros: Int64(i),
               peer: PeerCredentials(pid: 100, uid: 0, gid: 0), connection: UInt64(i / 1000), stream: UInt32(i % 1000),
               ciphertext: [UInt8(i & 0xFF), 1, 2, 3])
}

func configuration(_ path: String, mode: AuditMode = .bestEffort, maxSize: Int64 = 0, maxFiles: Int = 5,
                   queueCapacity: Int = 65536, usageFilePath: String? = nil,
                   usageFlushInterval: Double = 10) -> AuditConfiguration {
    AuditConfiguration(path: path, maxSize: maxSize, maxFiles: maxFiles, mode: mode, hmacKey: testKey,
                       queueCapacity: queueCapacity, usageFilePath: usageFilePath,
                       usageFlushInterval: usageFlushInterval)
}

/// Writes `count` records through a fresh log and closes it.
func writeRecords(_ path: String, count: Int, maxSize: Int64 = 0, maxFiles: Int = 5, start: Int = 0) throws {
    let log = try AuditLog(configuration: configuration(path, maxSize: maxSize, maxFiles: maxFiles), log: quietLog)
    for i in start..<(start + count) { _ = log.record(sampleEvent(i)) }
    log.close()
}

func readLines(_ path: String) -> [String] {
    guard let data = FileManager.default.contents(atPath: path) else { return [] }
    return String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
}

func writeLines(_ lines: [String], to path: String, trailingNewline: Bool = true) {
    let text = lines.joined(separator: "\n") + (trailingNewline ? "\n" : "")
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
}

func jsonObject(_ line: String) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
}

func fileMode(_ path: String) -> mode_t {
    var st = stat()
    return stat(path, &st) == 0 ? st.st_mode & 0o777 : 0
}

/// Runs `body` on a separate thread; false if it did not finish within `seconds` (so a hang fails the test).
func finishes(within seconds: Double, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    Thread {
        body()
        done.signal()
    }.start()
    return done.wait(timeout: .now() + seconds) == .success
}

/// A value shared with closures that run on other threads.
final class Shared<Value: Sendable>: Sendable {
    private let storage: LockedValue<Value>
    init(_ value: Value) { storage = LockedValue(value) }
    func load() -> Value { storage.withLock { $0 } }
    func store(_ value: Value) { storage.withLock { $0 = value } }
}

/// Runs `body(i)` for i in 0..<count on `count` real threads at once (Dispatch's concurrentPerform would only
/// use as many threads as there are cores) and waits for all of them.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    for i in 0..<count {
        Thread {
            body(i)
            done.signal()
        }.start()
    }
    for _ in 0..<count { done.wait() }
}
