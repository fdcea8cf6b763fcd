// `kekd serve`'s command line → DaemonConfiguration, without starting anything.
import CommandLineFlags
import Testing
@testable import kekd

private func configuration(_ args: [String], environment: [String: String] = [:], userID: UInt32 = 1234) throws -> DaemonConfiguration {
    switch try DaemonConfiguration.parse(args, environment: environment, userID: userID) {
    case .serve(let configuration): return configuration
    case .help: throw UsageError(message: "unexpected help")
    }
}

private func usageError(_ args: [String], environment: [String: String] = [:]) -> String? {
    do {
        _ = try DaemonConfiguration.parse(args, environment: environment, userID: 1234)
        return nil
    } catch { return error.message }
}

@Test func productionDefaults() throws {
    let c = try configuration([])
    #expect(!c.dev && !c.fips)
    #expect(c.logLevel == .info)
    #expect(c.stateDir == "/var/lib/kekd")
    #expect(c.server.socketPath == "/var/run/kmsplugin/socket.sock")
    #expect(c.server.socketMode == 0o600)
    #expect(c.server.allowedUIDs == [0])
    #expect(c.server.grpc.maxReceiveMessageSize == 4 << 20)
    #expect(c.server.grpc.maxBufferedRequestBytesPerConnection == 16 << 20)
    #expect(c.server.grpc.http2.maxQueuedOutputBytes == (16 << 20) + (4 << 20) + 5)
    #expect(c.server.maxBufferedRequestBytes == 32 << 20)
    #expect(c.server.grpc.requestTimeoutNanos == 30_000_000_000)
    #expect(c.server.maxConnections == 64 && c.server.maxInFlightBackendCalls == 256)
    #expect(c.server.prefaceTimeout == 10 && c.server.idleTimeout == 600 && c.server.shutdownGrace == 5)
    #expect(c.server.spinBeforeSleepNanos == 50_000)
    #expect(!c.server.auditBlocksCalls)
    #expect(c.statusVersion == "v2")
    #expect(c.health == DaemonConfiguration.HealthAddress(host: "127.0.0.1", port: 8787))
    #expect(c.notifier == nil)
    #expect(c.backends.encrypting.name == "file" && c.backends.flags.isEmpty && c.backends.decryptAlso.kinds.isEmpty)
    #expect(c.audit.path == "/var/lib/kekd/audit.log")
    #expect(c.audit.mode == .bestEffort && c.audit.maxSize == 100 << 20 && c.audit.maxFiles == 10)
    #expect(c.audit.hmacKeyFile == nil && !c.audit.newChain)
}

@Test func devModeKeepsEverythingUnderStateAndAdmitsTheCaller() throws {
    let c = try configuration(["--dev"], userID: 1234)
    #expect(c.dev)
    #expect(c.stateDir == "state")
    #expect(c.server.socketPath == "state/kekd.sock")
    #expect(c.server.allowedUIDs == [0, 1234])
    #expect(c.audit.path == "state/audit.log")
    // An explicit list wins over --dev's.
    #expect(try configuration(["--dev", "--allowed-uids", "5,6"]).server.allowedUIDs == [5, 6])
}

@Test func flagsReachTheirSettings() throws {
    let c = try configuration([
        "--listen", "unix:///run/k.sock", "--socket-mode=0660", "--status-only-uids", "7", "--log-level", "warning",
        "--max-message-size", "64Ki", "--max-concurrent-streams", "8", "--max-header-list-size", "2Ki",
        "--max-buffered-request-bytes-per-connection", "1Mi", "--max-queued-output", "128Ki", "--max-buffered-request-bytes", "2Mi",
        "--request-timeout", "0", "--max-connections", "3", "--max-inflight-backend-calls", "9", "--preface-timeout", "500ms",
        "--idle-timeout", "1m", "--shutdown-grace", "2s", "--spin-before-sleep-us", "0", "--status-version", "v2beta1", "--health-addr", "[::1]:9000",
        "--backend", "vault", "--vault-addr", "https://v:8200", "--key-file", "/k.json", "--audit-log", "-",
        "--audit-mode", "fail-closed", "--audit-max-size", "8Ki", "--audit-max-files", "2", "--audit-hmac-key-file", "/h",
        "--audit-new-chain", "--fips",
    ])
    #expect(c.server.socketPath == "/run/k.sock" && c.server.socketMode == 0o660 && c.server.statusOnlyUIDs == [7])
    #expect(c.logLevel == .warn && c.fips)
    #expect(c.server.grpc.maxReceiveMessageSize == 64 << 10 && c.server.grpc.http2.maxConcurrentStreams == 8)
    #expect(c.server.grpc.http2.maxHeaderListSize == 2 << 10)
    #expect(c.server.grpc.maxBufferedRequestBytesPerConnection == 1 << 20 && c.server.grpc.http2.maxQueuedOutputBytes == 128 << 10)
    #expect(c.server.maxBufferedRequestBytes == 2 << 20 && c.server.grpc.requestTimeoutNanos == 0)
    #expect(c.server.maxConnections == 3 && c.server.maxInFlightBackendCalls == 9)
    #expect(c.server.prefaceTimeout == 0.5 && c.server.idleTimeout == 60 && c.server.shutdownGrace == 2)
    #expect(c.server.spinBeforeSleepNanos == 0)
    #expect(c.statusVersion == "v2beta1" && c.health == DaemonConfiguration.HealthAddress(host: "::1", port: 9000))
    // Only the encrypting kind's own flags reach it.
    #expect(c.backends.encrypting.name == "vault" && c.backends.flags == ["vault-addr": "https://v:8200"])
    #expect(c.audit.path == "-" && c.audit.mode == .failClosed && c.audit.maxSize == 8 << 10 && c.audit.maxFiles == 2)
    #expect(c.audit.hmacKeyFile == "/h" && c.audit.newChain)
    #expect(c.server.auditBlocksCalls)
    #expect(try configuration(["--health-addr", "off"]).health == nil)
    #expect(try configuration(["--listen", "relative/k.sock"]).server.socketPath == "relative/k.sock")
}

@Test func decryptAlsoKindsAndTheirPrefixedFlags() throws {
    let c = try configuration(["--decrypt-also", "vault", "--decrypt-also-vault-addr=https://old", "--decrypt-also", "pkcs11",
                               "--decrypt-also-pkcs11-module", "/m.so"])
    #expect(c.backends.decryptAlso.kinds.map(\.name) == ["vault", "pkcs11"])
    #expect(c.backends.decryptAlso.values == ["vault-addr": "https://old", "pkcs11-module": "/m.so"])
    #expect(usageError(["--decrypt-also", "nope"]) == "--decrypt-also must be one of file, vault, pkcs11, got nope")
    #expect(usageError(["--decrypt-also", "vault", "--decrypt-also", "vault"]) == "--decrypt-also vault given twice")
    #expect(usageError(["--decrypt-also", "file", "--decrypt-also-key-file", "a", "--decrypt-also-key-file", "b"])
            == "--decrypt-also-key-file given twice")
    #expect(usageError(["--decrypt-also-vault-addr", "x"]) == "--decrypt-also-vault-addr needs --decrypt-also vault")
    #expect(usageError(["--decrypt-also-bogus", "1"]) == "unknown flag --decrypt-also-bogus (see kekd serve --help)")
    #expect(usageError(["--decrypt-also"]) == "--decrypt-also needs a value")
    #expect(usageError(["--decrypt-also", "file"]) == "--decrypt-also file: file is already the encrypting backend (--backend)")
}

@Test func helpAndUsageErrors() {
    #expect(throws: Never.self) {
        guard case .help = try DaemonConfiguration.parse(["--dev", "--help"], environment: [:], userID: 0) else {
            Issue.record("--help should ask for help")
            return
        }
    }
    #expect(usageError(["--help", "--nope"]) == "unknown flag --nope (see kekd serve --help)")
    #expect(usageError(["stray"]) == "unexpected argument stray")
    #expect(usageError(["--dev=yes"]) == "--dev takes no value")
    #expect(usageError(["--log-level", "loud"]) == "--log-level must be debug, info, warn or error")
    #expect(usageError(["--socket-mode", "0999"]) == "--socket-mode must be octal permissions like 0600")
    #expect(usageError(["--socket-mode", "01777"]) == "--socket-mode must be octal permissions like 0600")
    #expect(usageError(["--listen", "tcp://x:1"]) == "--listen must be unix:///path or a path, got tcp://x:1")
    #expect(usageError(["--listen", "unix://"]) == "--listen needs a socket path")
    #expect(usageError(["--allowed-uids", "0,root"]) == "--allowed-uids must be comma-separated numbers, got 0,root")
    #expect(usageError(["--max-message-size", "1000"]) == "--max-message-size: expected a number ≥ 1024, got 1000")
    #expect(usageError(["--max-buffered-request-bytes-per-connection", "2Gi"]) == "--max-buffered-request-bytes-per-connection: at most 1Gi")
    #expect(usageError(["--max-buffered-request-bytes", "1Ki"]) == "--max-buffered-request-bytes: expected a number ≥ \((4 << 20) + 5), got 1Ki")
    #expect(usageError(["--request-timeout", "25h"]) == "--request-timeout: at most 24h")
    #expect(usageError(["--spin-before-sleep-us", "1001"]) == "--spin-before-sleep-us: at most 1000")
    #expect(usageError(["--idle-timeout", "soon"]) == "--idle-timeout: expected a duration like 5s, 10m, 720h, got soon")
    #expect(usageError(["--status-version", "v1"]) == "--status-version must be v2 or v2beta1")
    #expect(usageError(["--health-addr", "localhost"]) == "--health-addr must be HOST:PORT or off, got localhost")
    #expect(usageError(["--backend", "hsm"]) == "--backend must be one of file, vault, pkcs11, got hsm")
    #expect(usageError(["--audit-mode", "strict"]) == "--audit-mode must be best-effort or fail-closed")
    #expect(usageError(["--audit-max-files", "0"]) == "--audit-max-files: expected a number ≥ 1, got 0")
}

@Test func notifySocketComesFromTheEnvironment() throws {
    #expect(try configuration([], environment: ["NOTIFY_SOCKET": "/run/systemd/notify"]).notifier != nil)
    #expect(try configuration([], environment: ["NOTIFY_SOCKET": "@abstract"]).notifier != nil)
    #expect(try configuration([], environment: ["NOTIFY_SOCKET": ""]).notifier == nil)
    #expect(usageError([], environment: ["NOTIFY_SOCKET": "relative"])?.hasPrefix("$NOTIFY_SOCKET: NOTIFY_SOCKET must be an absolute path") == true)
}
