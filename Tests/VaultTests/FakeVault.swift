import Foundation
import JSON
import KMS
import Locking
import Synchronization
import Logging
import Testing
@testable import Vault

/// Runs Tests/Interop/fake_vault.py (needs KEKD_PYTHON) and talks to its control endpoints.
final class FakeVault: @unchecked Sendable {
    static let python = ProcessInfo.processInfo.environment["KEKD_PYTHON"]
    static var available: Bool { python != nil }
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Interop/fake_vault.py").path

    private let process = Process()
    private let stdinPipe = Pipe()
    let dir: String
    let info: [String: Any]
    private let control: HTTPSClient

    init(extraArguments: [String] = []) throws {
        dir = NSTemporaryDirectory() + "kekd-fake-vault-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let stdoutPipe = Pipe()
        process.executableURL = URL(fileURLWithPath: Self.python ?? "/usr/bin/python3")
        process.arguments = [Self.script, "--dir", dir] + extraArguments
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        try process.run()
        var line: [UInt8] = []
        while !line.contains(10) {
            let chunk = stdoutPipe.fileHandleForReading.availableData
            if chunk.isEmpty { throw KMSError(.unavailable, "fake_vault.py exited before printing its address") }
            line += chunk
        }
        info = (try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]) ?? [:]
        let ca = info["ca_pem"] as? String
        control = try HTTPSClient(endpoint: try Endpoint(url: info["addr"] as? String ?? ""), tls: TLSSettings(caFile: ca))
    }

    deinit {
        try? stdinPipe.fileHandleForWriting.close()
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func string(_ name: String) -> String { info[name] as? String ?? "" }
    var addr: String { string("addr") }

    @discardableResult
    func call(_ what: String, _ body: [String: Any] = [:]) throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: body)
        let r = try control.send(HTTPRequest(method: "POST", path: "/_fake/" + what, body: [UInt8](data)), deadline: Date(timeIntervalSinceNow: 5))
        return (try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]) ?? [:]
    }

    /// Vault API call counters: total and per operation.
    func stats() throws -> (requests: Int, byOp: [String: Int], connections: Int, namespaces: [String]) {
        let s = try call("stats")
        return (s["requests"] as? Int ?? -1, s["by_op"] as? [String: Int] ?? [:], s["connections"] as? Int ?? -1,
                s["namespaces"] as? [String] ?? [])
    }

    func resetStats() throws { try call("reset_stats") }

    /// Transit admin operations, as an operator would do them with a root token.
    func vault(_ method: String, _ path: String, _ body: [String: Any]? = nil) throws -> Int {
        let token = try call("token", ["ttl": 0])["token"] as? String ?? ""
        let payload = try body.map { [UInt8](try JSONSerialization.data(withJSONObject: $0)) } ?? []
        let r = try control.send(HTTPRequest(method: method, path: "/v1/" + path, headers: [("X-Vault-Token", token)], body: payload),
                                 deadline: Date(timeIntervalSinceNow: 5))
        return r.status
    }

    /// Flags for a kekd configuration against this fake.
    func flags(_ extra: [String: String] = [:], auth: String = "token") -> [String: String] {
        var flags = ["vault-addr": addr, "vault-key": string("key"), "vault-ca-file": string("ca_pem"),
                     "vault-connect-timeout": "1s", "vault-request-timeout": "2s"]
        switch auth {
        case "token": flags["vault-token-file"] = string("token_file")
        case "approle":
            flags["vault-approle-role-id-file"] = string("role_id_file")
            flags["vault-approle-secret-id-file"] = string("secret_id_file")
        default:
            flags["vault-auth"] = "cert"
            flags["vault-client-cert"] = string("client_pem")
            flags["vault-client-key"] = string("client_key")
        }
        return flags.merging(extra) { $1 }
    }

    func keyring(_ extra: [String: String] = [:], auth: String = "token", tick: Double = 0.05,
                 onBackendCall: BackendCallHook? = nil, onCache: (@Sendable (Bool) -> Void)? = nil,
                 log: Logger? = nil) throws -> VaultKeyring {
        let ring = try VaultKeyring(configuration: try VaultConfiguration.parse(flags(extra, auth: auth)), onBackendCall: onBackendCall,
                                    onCache: onCache, log: log ?? Logger { _ in }, maintenanceTick: tick)
        #expect(ring.waitUntilReady(timeout: 10), "keyring never became ready: \(ring.health().detail)")
        return ring
    }
}

/// Collects log lines from a keyring.
final class LogLines: Sendable {
    private let lines = LockedValue<[String]>([])
    /// Lines as `level: message`.
    var sink: Logger {
        Logger(minimumLevel: .debug) { line in
            guard let object = JSONValue.parse(line)?.object else { return }
            self.lines.withLock { $0.append("\(object["level"]?.string ?? ""): \(object["msg"]?.string ?? "")") }
        }
    }
    var all: [String] { lines.withLock { $0 } }
}

final class Counter: Sendable {
    private let atomic = Atomic<Int>(0)
    func add() { atomic.add(1, ordering: .relaxed) }
    var value: Int { atomic.load(ordering: .relaxed) }
}
