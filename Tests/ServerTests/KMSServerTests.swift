import Foundation
import GRPC
import GRPCCodes
import KMS
import KMSProto
import Locking
import Logging
import Testing
@testable import Server
import Transport

/// A backend whose Decrypt of ciphertext "slow" waits, to prove one slow stream does not hold up the others, and of
/// "wait" waits until its call is cancelled (at most 5 s), to prove cancellation reaches the backend.
private final class FakeBackend: KeyBackend, @unchecked Sendable {
    let name = "fake"
    let mayBlock: Bool
    let delay: Double
    init(mayBlock: Bool, delay: Double = 0.5) { self.mayBlock = mayBlock; self.delay = delay }
    func status() -> BackendStatus { BackendStatus(healthy: true, keyID: "fake-key-1", detail: "") }
    func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        EncryptResult(ciphertext: plaintext.reversed(), keyID: "fake-key-1", annotations: [:])
    }
    let decrypts = LockedValue(0)
    /// Seconds a "wait" Decrypt waited before it saw its cancellation (nil: not seen).
    let cancelledAfter = LockedValue<Double?>(nil)
    func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                 context: CallContext) throws(KMSError) -> [UInt8] {
        decrypts.withLock { $0 += 1 }
        if ciphertext == Array("slow".utf8) { Thread.sleep(forTimeInterval: delay) }
        if ciphertext == Array("wait".utf8) {
            let t0 = Date()
            while !context.isCancelled && Date().timeIntervalSince(t0) < 5 { Thread.sleep(forTimeInterval: 0.002) }
            if context.isCancelled { cancelledAfter.withLock { $0 = Date().timeIntervalSince(t0) } }
            throw KMSError(.unavailable, "gave up")
        }
        guard keyID == "fake-key-1" else { throw KMSError(.failedPrecondition, "unknown key") }
        return ciphertext.reversed()
    }
    /// With `mayBlock`: Encrypt never blocks, a Decrypt only without the `cached.kekd.test` annotation (as the
    /// Vault and PKCS#11 backends answer for a cached local KEK).
    func wouldBlock(_ call: BackendCall) -> Bool {
        guard mayBlock, case .decrypt(_, let annotations) = call else { return false }
        return annotations["cached.kekd.test"] == nil
    }
    func reload() {}
    func close() {}
}

private func tempSocketPath() -> String {
    let dir = NSTemporaryDirectory() + "kekd-test-\(UUID().uuidString.prefix(8))"
    return dir + "/s.sock"
}

private func startServer(_ backend: FakeBackend, configure: (inout ServerConfiguration) -> Void = { _ in }) throws -> KMSServer {
    var config = ServerConfiguration(socketPath: tempSocketPath())
    configure(&config)
    let server = KMSServer(configuration: config, service: KMSService(backend: backend), audit: nil, metrics: nil,
                           logger: Logger(minimumLevel: .error))
    try server.start()
    return server
}

private let decryptPath = "/v2.KeyManagementService/Decrypt"
private let statusPath = "/v2.KeyManagementService/Status"

/// Sends every queued call on a raw connection and collects responses until `count` arrived or 5 s passed.
private func exchange(_ conn: GRPCClientConnection, fd: Int32, expecting count: Int) -> [UInt32: (GRPCResponse, Date)] {
    _ = Posix.writeAll(fd, conn.http2.takeOutput())
    var done: [UInt32: (GRPCResponse, Date)] = [:]
    var buffer = [UInt8](repeating: 0, count: 65536)
    let t0 = Date()
    while done.count < count && Date().timeIntervalSince(t0) < 5 {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { break }
        for event in conn.receive(buffer[0..<n]) {
            if case let .response(id, r) = event { done[id] = (r, Date()) }
        }
        if conn.http2.hasOutput { _ = Posix.writeAll(fd, conn.http2.takeOutput()) }
    }
    return done
}

@Test func statusOverTheSocket() throws {
    let server = try startServer(FakeBackend(mayBlock: false))
    defer { server.shutdown() }
    let client = try UnixGRPCClient(socketPath: server.configuration.socketPath)
    let response = try client.call(path: statusPath, message: StatusRequest().serializedBytes())
    #expect(response.status == .ok)
    let status = try StatusResponse(serializedBytes: response.message![...])
    #expect(status.version == "v2" && status.healthz == "ok" && status.keyID == "fake-key-1")
    let bad = try client.call(path: decryptPath, message: [0x0a, 0xff])
    #expect(bad.status.code == .invalidArgument)
}

@Test func socketFileIsPrivateAndALiveSocketIsNotStolen() throws {
    let server = try startServer(FakeBackend(mayBlock: false))
    let path = server.configuration.socketPath
    var st = stat()
    #expect(stat(path, &st) == 0)
    #expect(st.st_mode & 0o777 == 0o600)
    var second = ServerConfiguration(socketPath: path)
    second.maxConnections = 1
    let rival = KMSServer(configuration: second, service: KMSService(backend: FakeBackend(mayBlock: false)), audit: nil, metrics: nil, logger: Logger(minimumLevel: .error))
    #expect(throws: SystemError.self) { try rival.start() }
    server.shutdown()
    #expect(!FileManager.default.fileExists(atPath: path))
}

@Test func staleSocketFileIsReplaced() throws {
    let path = tempSocketPath()
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    // Bind and close without unlinking: a stale socket file nobody answers on.
    var addr = try Posix.makeUnixAddress(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    close(fd)
    let server = try startServer(FakeBackend(mayBlock: false)) { $0.socketPath = path }
    defer { server.shutdown() }
    let client = try UnixGRPCClient(socketPath: path)
    #expect(try client.call(path: statusPath, message: []).status == .ok)
}

@Test func aSlowCallDoesNotDelayOtherStreamsOnTheSameConnection() throws {
    let server = try startServer(FakeBackend(mayBlock: true, delay: 1.0))
    defer { server.shutdown() }
    let fd = try Posix.connectUnix(server.configuration.socketPath)
    defer { close(fd) }
    let conn = GRPCClientConnection()
    let slow = DecryptRequest(ciphertext: Array("slow".utf8), uid: "u", keyID: "fake-key-1", annotations: [:])
    let slowID = try #require(conn.startCall(path: decryptPath, message: slow.serializedBytes()))
    let fastID = try #require(conn.startCall(path: statusPath, message: []))
    let t0 = Date()
    let done = exchange(conn, fd: fd, expecting: 2)
    #expect(done.values.allSatisfy { $0.0.status == .ok })
    let fast = try #require(done[fastID]).1.timeIntervalSince(t0)
    let slowTime = try #require(done[slowID]).1.timeIntervalSince(t0)
    #expect(fast < 0.3)
    #expect(slowTime >= 0.9)
}

@Test func peersOutsideAllowedUIDsAreRefused() throws {
    let server = try startServer(FakeBackend(mayBlock: false)) {
        $0.allowedUIDs = [getuid() &+ 12345]
        $0.statusOnlyUIDs = []
    }
    defer { server.shutdown() }
    let client = try UnixGRPCClient(socketPath: server.configuration.socketPath, ioTimeoutSeconds: 2)
    #expect(throws: (any Error).self) { try client.call(path: statusPath, message: []) }
}

@Test func statusOnlyPeersMayCallStatusButNotEncryptOrDecrypt() throws {
    // The default: kekd's own uid (the test's) is status-only, root-only everything else.
    let server = try startServer(FakeBackend(mayBlock: false)) { $0.allowedUIDs = [getuid() &+ 12345] }
    defer { server.shutdown() }
    #expect(server.configuration.statusOnlyUIDs == [getuid()])
    let client = try UnixGRPCClient(socketPath: server.configuration.socketPath, ioTimeoutSeconds: 2)
    #expect(try client.call(path: statusPath, message: []).status.code == .ok)
    for path in ["/v2.KeyManagementService/Encrypt", "/v2.KeyManagementService/Decrypt"] {
        #expect(try client.call(path: path, message: []).status.code == .permissionDenied, "\(path)")
    }
}

@Test func clientGivesUpOnASilentServerAfterItsTimeout() throws {
    // A socket that accepts (the backlog does) and never answers: the call ends with the timeout, not a hang.
    let path = tempSocketPath()
    let dir = (path as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var addr = try Posix.makeUnixAddress(path)
    let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(listener) }
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    #expect(bound == 0 && listen(listener, 4) == 0)
    let client = try UnixGRPCClient(socketPath: path, ioTimeoutSeconds: 0.2)
    let t0 = Date()
    #expect {
        _ = try client.call(path: statusPath, message: [])
    } throws: { "\($0)".contains("timed out waiting for kekd") }
    let waited = Date().timeIntervalSince(t0)
    #expect(waited >= 0.19 && waited < 3, "waited \(waited) s")
}

@Test func kekdsOwnUIDIsNotACallerByDefault() {
    #expect(ServerConfiguration(socketPath: "/x").allowedUIDs == [0])
}

@Test func inFlightLimitGivesResourceExhaustedButCallsAnsweredFromMemoryNeedNoSlot() throws {
    // One pool slot, taken by a slow uncached Decrypt: an Encrypt and a cached Decrypt are answered on the
    // connection's thread all the same, while a second uncached Decrypt finds the pool full.
    let server = try startServer(FakeBackend(mayBlock: true, delay: 0.5)) { $0.maxInFlightBackendCalls = 1 }
    defer { server.shutdown() }
    let fd = try Posix.connectUnix(server.configuration.socketPath)
    defer { close(fd) }
    let conn = GRPCClientConnection()
    let slow = DecryptRequest(ciphertext: Array("slow".utf8), uid: "u", keyID: "fake-key-1", annotations: [:]).serializedBytes()
    let cached = DecryptRequest(ciphertext: [1, 2, 3], uid: "u", keyID: "fake-key-1",
                                annotations: ["cached.kekd.test": [1]]).serializedBytes()
    let encrypt = EncryptRequest(plaintext: [4, 5, 6], uid: "u").serializedBytes()
    let first = try #require(conn.startCall(path: decryptPath, message: slow))
    let inlineDecrypt = try #require(conn.startCall(path: decryptPath, message: cached))
    let inlineEncrypt = try #require(conn.startCall(path: "/v2.KeyManagementService/Encrypt", message: encrypt))
    let refused = try #require(conn.startCall(path: decryptPath, message: slow))
    let results = exchange(conn, fd: fd, expecting: 4).mapValues { $0.0.status.code }
    #expect(results[first] == .ok)
    #expect(results[inlineDecrypt] == .ok)
    #expect(results[inlineEncrypt] == .ok)
    #expect(results[refused] == .resourceExhausted)
}

@Test func gracefulShutdownLetsInFlightCallsFinishAndRemovesTheSocket() throws {
    let server = try startServer(FakeBackend(mayBlock: true, delay: 0.5))
    let path = server.configuration.socketPath
    let result = LockedValue<GRPCStatusCode?>(nil)
    let started = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)
    Thread {
        let client = try? UnixGRPCClient(socketPath: path)
        started.signal()
        let slow = DecryptRequest(ciphertext: Array("slow".utf8), uid: "u", keyID: "fake-key-1", annotations: [:]).serializedBytes()
        let r = try? client?.call(path: decryptPath, message: slow)
        result.withLock { $0 = r?.status.code }
        finished.signal()
    }.start()
    started.wait()
    Thread.sleep(forTimeInterval: 0.1)
    server.shutdown()
    #expect(finished.wait(timeout: .now() + 5) == .success)
    #expect(result.withLock { $0 } == .ok)
    #expect(!FileManager.default.fileExists(atPath: path))
}

@Test(arguments: [false, true])
func aCallPastItsDeadlineIsDeadlineExceededWithoutBackendWork(mayBlock: Bool) throws {
    // grpc-timeout 0: the deadline has passed when the call is handed out, inline or on the pool.
    let backend = FakeBackend(mayBlock: mayBlock)
    let server = try startServer(backend)
    defer { server.shutdown() }
    let client = try UnixGRPCClient(socketPath: server.configuration.socketPath)
    let request = DecryptRequest(ciphertext: [1, 2, 3], uid: "u", keyID: "fake-key-1", annotations: [:]).serializedBytes()
    #expect(try client.call(path: decryptPath, message: request, timeoutNanos: 0).status.code == .deadlineExceeded)
    #expect(backend.decrypts.withLock { $0 } == 0)
    #expect(try client.call(path: decryptPath, message: request).status.code == .ok)
    #expect(backend.decrypts.withLock { $0 } == 1)
}

@Test func aStreamResetMidCallIsNeverAnsweredAndTheConnectionGoesOn() throws {
    // The client resets a Decrypt while the backend works on it (on the pool): kekd must not answer the reset
    // stream (no HEADERS or DATA after RST_STREAM), must free the call, and must keep serving the connection.
    let backend = FakeBackend(mayBlock: true, delay: 0.4)
    let server = try startServer(backend) { $0.maxInFlightBackendCalls = 1 }
    defer { server.shutdown() }
    // Reset once the backend has the call.
    let (fd, conn, resetID) = try startBlockingDecrypt(backend, server, ciphertext: "slow")
    defer { close(fd) }
    #expect(backend.decrypts.withLock { $0 } == 1)
    conn.http2.resetStream(streamID: resetID, code: .cancel)
    let statusID = try #require(conn.startCall(path: statusPath, message: []))
    var done = exchange(conn, fd: fd, expecting: 1)
    #expect(done.keys.sorted() == [statusID])
    // After the backend finished the reset call, its pool slot is free again and nothing was sent for it.
    Thread.sleep(forTimeInterval: 0.6)
    let fast = DecryptRequest(ciphertext: [1, 2], uid: "u", keyID: "fake-key-1", annotations: [:]).serializedBytes()
    let afterID = try #require(conn.startCall(path: decryptPath, message: fast))
    done = exchange(conn, fd: fd, expecting: 1)
    #expect(done.keys.sorted() == [afterID])
    #expect(done[afterID]?.0.status == .ok)
}

/// Opens a connection and sends a Decrypt the backend holds ("slow": a while, "wait": until cancelled); returns once
/// the backend has it.
private func startBlockingDecrypt(_ backend: FakeBackend, _ server: KMSServer,
                                  ciphertext: String = "wait") throws -> (Int32, GRPCClientConnection, UInt32) {
    let fd = try Posix.connectUnix(server.configuration.socketPath)
    let conn = GRPCClientConnection()
    let waiting = DecryptRequest(ciphertext: Array(ciphertext.utf8), uid: "u", keyID: "fake-key-1", annotations: [:]).serializedBytes()
    let streamID = try #require(conn.startCall(path: decryptPath, message: waiting))
    _ = Posix.writeAll(fd, conn.http2.takeOutput())
    let deadline = Date().addingTimeInterval(2)
    while backend.decrypts.withLock({ $0 }) == 0 && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
    return (fd, conn, streamID)
}

@Test func aStreamResetReachesTheBlockedBackendAndFreesItsPoolSlot() throws {
    // One pool slot, held by a Decrypt that waits for its cancellation: the client's RST_STREAM must reach the
    // backend (through the call's context) and free the slot for the next blocking call.
    let backend = FakeBackend(mayBlock: true)
    let server = try startServer(backend) { $0.maxInFlightBackendCalls = 1 }
    defer { server.shutdown() }
    let (fd, conn, resetID) = try startBlockingDecrypt(backend, server)
    defer { close(fd) }
    let resetAt = Date()
    conn.http2.resetStream(streamID: resetID, code: .cancel)
    let blocking = DecryptRequest(ciphertext: [1, 2], uid: "u", keyID: "fake-key-1", annotations: [:]).serializedBytes()
    _ = Posix.writeAll(fd, conn.http2.takeOutput())
    while backend.cancelledAfter.withLock({ $0 }) == nil && Date() < resetAt.addingTimeInterval(2) { Thread.sleep(forTimeInterval: 0.005) }
    #expect(backend.cancelledAfter.withLock { $0 } != nil, "the backend never saw the cancellation")
    #expect(Date().timeIntervalSince(resetAt) < 1)
    Thread.sleep(forTimeInterval: 0.05)  // the pool posts its completion back to the connection
    let nextID = try #require(conn.startCall(path: decryptPath, message: blocking))
    let done = exchange(conn, fd: fd, expecting: 1)
    #expect(done.keys.sorted() == [nextID], "nothing is answered on the reset stream")
    #expect(done[nextID]?.0.status == .ok, "the pool slot is free again")
}

@Test func closingTheConnectionCancelsItsCallsOnThePool() throws {
    let backend = FakeBackend(mayBlock: true)
    let server = try startServer(backend)
    defer { server.shutdown() }
    let (fd, _, _) = try startBlockingDecrypt(backend, server)
    close(fd)
    let deadline = Date().addingTimeInterval(2)
    while backend.cancelledAfter.withLock({ $0 }) == nil && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
    #expect(backend.cancelledAfter.withLock { $0 } != nil, "the backend never saw the connection close")
}

#if DEBUG
@Test func touchingAConnectionsStateOffItsOwnThreadTraps() async {
    // The ownership rule (like Go's serveG.check()): only the connection's own thread may touch its state.
    await #expect(processExitsWith: .failure) {
        var config = ServerConfiguration(socketPath: "/unused")
        config.maxConnections = 1
        let server = KMSServer(configuration: config, service: KMSService(backend: FakeBackend(mayBlock: false)), audit: nil,
                               metrics: nil, logger: Logger(minimumLevel: .error))
        let connection = try ServerConnection(id: 1, fd: -1, peer: PeerCredentials(pid: 1, uid: 0, gid: 0), server: server)
        connection.checkOwner()  // never started: this thread is not its owner
    }
}
#endif
