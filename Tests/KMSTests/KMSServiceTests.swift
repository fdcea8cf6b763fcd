import Crypto
import Foundation
import GRPCCodes
import KMSProto
import Testing
@testable import KMS
import Logging

/// A backend that returns whatever a test tells it to, and counts calls.
private final class ScriptedBackend: KeyBackend {
    let name = "scripted"
    let state: BackendStatus
    let result: EncryptResult
    let calls = Atomic<Int>(0)
    init(state: BackendStatus = BackendStatus(healthy: true, keyID: "k1", detail: ""),
         result: EncryptResult = EncryptResult(ciphertext: [1], keyID: "k1", annotations: [:])) {
        self.state = state
        self.result = result
    }
    func status() -> BackendStatus { state }
    func wouldBlock(_ call: BackendCall) -> Bool { false }
    func encrypt(plaintext: [UInt8], uid: String, context: CallContext) throws(KMSError) -> EncryptResult {
        calls.add(1, ordering: .relaxed)
        return result
    }
    func decrypt(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]], uid: String,
                 context: CallContext) throws(KMSError) -> [UInt8] {
        calls.add(1, ordering: .relaxed)
        return [42]
    }
    func reload() {}
    func close() {}
}

/// The KMSError code `body` throws, nil when it succeeds.
private func code(_ body: () throws -> Void) -> GRPCStatusCode? {
    do { try body(); return nil } catch let error as KMSError { return error.code } catch { return .dataLoss }
}

@Test func statusReportsVersionHealthAndKeyID() {
    let healthy = KMSService(backend: ScriptedBackend())
    #expect(healthy.status(StatusRequest()) == StatusResponse(version: "v2", healthz: "ok", keyID: "k1"))
    let beta = KMSService(backend: ScriptedBackend(), statusVersion: "v2beta1")
    #expect(beta.status(StatusRequest()).version == "v2beta1")
    let sick = KMSService(backend: ScriptedBackend(state: BackendStatus(healthy: false, keyID: "k1", detail: "vault sealed")))
    let response = sick.status(StatusRequest())
    #expect(response.healthz != "ok" && response.healthz.contains("vault sealed"))
}

@Test func badRequestsNeverReachTheBackend() {
    let backend = ScriptedBackend()
    let service = KMSService(backend: backend)
    let longUID = String(repeating: "u", count: 1025)
    #expect(code { _ = try service.encrypt(EncryptRequest(plaintext: [], uid: "u")) } == .invalidArgument)
    #expect(code { _ = try service.encrypt(EncryptRequest(plaintext: Array(repeating: 0, count: KMSLimits.maxPlaintextBytes + 1), uid: "u")) } == .invalidArgument)
    #expect(code { _ = try service.encrypt(EncryptRequest(plaintext: [1], uid: longUID)) } == .invalidArgument)
    let good = DecryptRequest(ciphertext: [1], uid: "u", keyID: "k1", annotations: ["local-kek.kekd.io": [1]])
    var bad: [DecryptRequest] = []
    var r = good; r.ciphertext = []; bad.append(r)
    r = good; r.ciphertext = Array(repeating: 0, count: KMSLimits.maxCiphertextBytes + 1); bad.append(r)
    r = good; r.keyID = ""; bad.append(r)
    r = good; r.keyID = String(repeating: "k", count: 1025); bad.append(r)
    r = good; r.annotations = ["not_fqdn": [1]]; bad.append(r)
    r = good; r.annotations = ["a.kekd.io": Array(repeating: 0, count: 32 * 1024)]; bad.append(r)
    r = good; r.uid = longUID; bad.append(r)
    for request in bad { #expect(code { _ = try service.decrypt(request) } == .invalidArgument) }
    #expect(backend.calls.load(ordering: .relaxed) == 0)
    #expect(code { _ = try service.decrypt(good) } == nil)
    var edge = good; edge.keyID = String(repeating: "k", count: 1024)
    #expect(code { _ = try service.decrypt(edge) } == nil)
}

@Test func backendOutputTheApiserverWouldRejectIsInternal() {
    let outputs = [
        EncryptResult(ciphertext: [], keyID: "k1", annotations: [:]),
        EncryptResult(ciphertext: Array(repeating: 1, count: 1025), keyID: "k1", annotations: [:]),
        EncryptResult(ciphertext: [1], keyID: "", annotations: [:]),
        EncryptResult(ciphertext: [1], keyID: "k1", annotations: ["Bad Key": [1]]),
    ]
    for output in outputs {
        let service = KMSService(backend: ScriptedBackend(result: output))
        #expect(code { _ = try service.encrypt(EncryptRequest(plaintext: Array(repeating: 0, count: 32), uid: "u")) } == .internalError)
    }
    // A large plaintext may produce a large ciphertext.
    let big = KMSService(backend: ScriptedBackend(result: EncryptResult(ciphertext: Array(repeating: 1, count: 5000), keyID: "k1", annotations: [:])))
    #expect(code { _ = try big.encrypt(EncryptRequest(plaintext: Array(repeating: 0, count: 4000), uid: "u")) } == nil)
}

@Test func serviceRoundTripsOverTheFileBackend() throws {
    let folder = TempFolder()
    let path = folder.file("kek.json")
    try FileKeyBackend.initializeKeyFile(path: path)
    let backend = try FileKeyBackend(keyFilePath: path, pollInterval: nil, log: Logger { _ in })
    defer { backend.close() }
    let service = KMSService(backend: backend)
    let status = service.status(StatusRequest())
    #expect(status.healthz == "ok" && status.version == "v2" && !status.keyID.isEmpty)
    for size in [1, 32, 64 * 1024, 1 << 20] {
        let plaintext = try SecureRandom.bytes(size)
        let sealed = try service.encrypt(EncryptRequest(plaintext: plaintext, uid: "u"))
        #expect(sealed.keyID == status.keyID)
        if size == 32 { #expect(sealed.ciphertext.count < 100) }
        let opened = try service.decrypt(DecryptRequest(ciphertext: sealed.ciphertext, uid: "u", keyID: sealed.keyID, annotations: sealed.annotations))
        #expect(opened.plaintext == plaintext)
    }
}

import Synchronization

