// Probing a running kekd over its unix socket with the project's own gRPC client.
import CommandLineFlags
import Dispatch
import FoundationEssentials
import Locking
import Glibc
import KMSProto
import KMSRPC

enum ProbeCommands {
    static let defaultSocket = "/var/run/kmsplugin/socket.sock"

    static func socketPath(_ args: Flags) -> String {
        var path = args.value("socket") ?? defaultSocket
        if path.hasPrefix("unix://") { path = String(path.dropFirst("unix://".count)) }
        return path
    }

    static func status(_ argv: [String]) -> Int32 {
        runCommand(argv, help: """
            usage: kekctl status [--socket PATH] [--timeout DURATION] [--liveness] [--json]
              Calls Status on a running kekd and prints version, health and key_id.
              Exit 0 when healthy, 1 otherwise (also when kekd does not answer within --timeout, default 3s).
              --liveness: exit 0 whenever kekd answers, healthy or not (a liveness probe must not restart kekd
              for a key backend outage a restart cannot fix).
              Fit for a static pod's exec probe: only callers kekd admits on its socket can run it.
            """) { argv in
            let args = try Flags(argv, valueFlags: ["socket", "timeout"], switchFlags: ["json", "liveness"])
            let timeout = try KeyCommands.parseDuration(args.value("timeout") ?? "3s")
            guard timeout > 0 else { throw UsageError(message: "--timeout must be positive") }
            guard timeout <= 86_400 else { throw UsageError(message: "--timeout: at most 24h") }
            let client = try KMSClient(socketPath: socketPath(args), ioTimeoutSeconds: timeout)
            let status: StatusResponse
            switch try client.status(timeoutNanos: UInt64(timeout * 1e9)) {
            case .success(let response): status = response
            case .failure(let failure):
                printError("Status failed: \(failure)")
                return args.has("liveness") ? ExitCode.ok : ExitCode.failure
            }
            if args.has("json") {
                print(try jsonText(["version": status.version, "healthz": status.healthz, "key_id": status.keyID]))
            } else {
                print("version: \(status.version)\nhealthz: \(status.healthz)\nkey_id:  \(status.keyID)")
            }
            return status.healthz == "ok" || args.has("liveness") ? ExitCode.ok : ExitCode.failure
        }
    }

    /// Reads the plaintext from stdin; prints JSON {ciphertext, key_id, annotations} (bytes in base64).
    static func encrypt(_ argv: [String]) -> Int32 {
        runCommand(argv, help: """
            usage: kekctl encrypt [--socket PATH] [--uid UID] < plaintext > envelope.json
              Encrypts stdin through a running kekd; prints {"ciphertext","key_id","annotations"} as JSON (base64 bytes).
            """) { argv in
            let args = try Flags(argv, valueFlags: ["socket", "uid"])
            let plaintext = readStandardInput()
            let client = try KMSClient(socketPath: socketPath(args))
            let request = EncryptRequest(plaintext: plaintext, uid: args.value("uid") ?? "kekctl-\(UUID().uuidString.lowercased())")
            let result: EncryptResponse
            switch try client.encrypt(request) {
            case .success(let response): result = response
            case .failure(let failure):
                printError("Encrypt failed: \(failure)")
                return ExitCode.failure
            }
            print(try jsonText(Envelope(ciphertext: Data(result.ciphertext).base64EncodedString(), key_id: result.keyID,
                                        annotations: result.annotations.mapValues { Data($0).base64EncodedString() })))
            return ExitCode.ok
        }
    }

    /// Reads the JSON printed by `kekctl encrypt` from stdin; writes the plaintext bytes to stdout.
    static func decrypt(_ argv: [String]) -> Int32 {
        runCommand(argv, help: """
            usage: kekctl decrypt [--socket PATH] [--uid UID] < envelope.json > plaintext
              Decrypts the JSON printed by `kekctl encrypt` through a running kekd; writes the plaintext to stdout.
            """) { argv in
            let args = try Flags(argv, valueFlags: ["socket", "uid"])
            guard let object = try? JSONDecoder().decode(Envelope.self, from: Data(readStandardInput())),
                  let ciphertext = Data(base64Encoded: object.ciphertext) else {
                printError("stdin must be the JSON printed by kekctl encrypt")
                return ExitCode.failure
            }
            let keyID = object.key_id
            var annotations: [String: [UInt8]] = [:]
            for (key, value) in object.annotations ?? [:] {
                guard let bytes = Data(base64Encoded: value) else { printError("annotation \(key) is not base64"); return ExitCode.failure }
                annotations[key] = [UInt8](bytes)
            }
            let client = try KMSClient(socketPath: socketPath(args))
            let request = DecryptRequest(ciphertext: [UInt8](ciphertext), uid: args.value("uid") ?? "kekctl-\(UUID().uuidString.lowercased())",
                                         keyID: keyID, annotations: annotations)
            switch try client.decrypt(request) {
            case .success(let result): writeStandardOutput(result.plaintext)
            case .failure(let failure):
                printError("Decrypt failed: \(failure)")
                return ExitCode.failure
            }
            return ExitCode.ok
        }
    }

    /// Load generator for scripts/bench: many calls on one connection, `--concurrency` in flight.
    static func bench(_ argv: [String]) -> Int32 {
        runCommand(argv, help: """
            usage: kekctl bench [--socket PATH] --op Status|Encrypt|Decrypt [--concurrency N] [--calls N] [--warmup N]
              Drives a running kekd over one connection and prints one JSON line: calls/s and p50/p99/max latency in µs.
            """) { argv in
            let args = try Flags(argv, valueFlags: ["socket", "op", "concurrency", "calls", "warmup"])
            let op = try args.required("op")
            guard let concurrency = Int(args.value("concurrency") ?? "1"), concurrency >= 1,
                  let calls = Int(args.value("calls") ?? "20000"), calls >= 1,
                  let warmup = Int(args.value("warmup") ?? "2000"), warmup >= 0 else {
                throw UsageError(message: "--concurrency, --calls and --warmup take positive numbers")
            }
            guard let method = KMSMethod(op: op) else { throw UsageError(message: "--op must be Status, Encrypt or Decrypt") }
            let client = try KMSClient(socketPath: socketPath(args))
            let encryptRequest = EncryptRequest(plaintext: [UInt8](repeating: 7, count: 32), uid: "bench")
            let message: [UInt8]
            switch method {
            case .status: message = StatusRequest().serializedBytes()
            case .encrypt: message = encryptRequest.serializedBytes()
            case .decrypt:
                switch try client.encrypt(encryptRequest) {
                case .success(let enc):
                    message = DecryptRequest(ciphertext: enc.ciphertext, uid: "bench", keyID: enc.keyID, annotations: enc.annotations).serializedBytes()
                case .failure(let failure):
                    printError("Encrypt for the Decrypt seed failed: \(failure)")
                    return ExitCode.failure
                }
            }
            var failures = 0
            if warmup > 0 {
                try client.runPipelined(total: warmup, concurrency: concurrency, method: method, message: message) { r, _ in
                    if r.status.code != .ok { failures += 1 }
                }
            }
            var latencies: [UInt64] = []
            latencies.reserveCapacity(calls)
            let t0 = DispatchTime.now().uptimeNanoseconds
            try client.runPipelined(total: calls, concurrency: concurrency, method: method, message: message) { r, ns in
                if r.status.code != .ok { failures += 1 }
                latencies.append(ns)
            }
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            latencies.sort()
            func pct(_ p: Double) -> Double { Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]) / 1000 }
            func f(_ v: Double) -> String { let tenths = Int((v * 10).rounded()); return "\(tenths / 10).\(tenths % 10)" }
            let line = "{\"op\":\"\(op)\",\"concurrency\":\(concurrency),\"calls\":\(calls),\"failures\":\(failures),"
                + "\"calls_per_second\":\(Int(Double(calls) / elapsed)),\"p50_us\":\(f(pct(0.50))),\"p99_us\":\(f(pct(0.99))),\"max_us\":\(f(pct(1.0)))}"
            print(line)
            return failures == 0 ? ExitCode.ok : ExitCode.failure
        }
    }
}

/// What `kekctl encrypt` prints and `kekctl decrypt` reads (bytes in base64).
private struct Envelope: Codable {
    let ciphertext: String
    let key_id: String
    let annotations: [String: String]?
}
