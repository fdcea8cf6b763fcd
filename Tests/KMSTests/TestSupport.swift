import Foundation
@testable import KMS

/// A fresh private folder for one test, removed when the value goes away.
final class TempFolder {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "kms-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Collects log lines a backend writes.
final class LogCollector: Sendable {
    private let lines = LockedValue<[String]>([])
    var sink: Logger { Logger(minimumLevel: .debug) { line in self.lines.withLock { $0.append(String(decoding: line.dropLast(), as: UTF8.self)) } } }
    var all: [String] { lines.withLock { $0 } }
}

import Locking
import Logging

func writeFile(_ path: String, _ bytes: [UInt8], mode: Int = 0o600) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
}

func readFile(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

func fileMode(_ path: String) throws -> Int {
    (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(within seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}
