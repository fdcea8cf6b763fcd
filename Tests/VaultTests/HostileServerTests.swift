// Issue 15 item 10: a broken or hostile Vault cannot pin a core. Each response is read against its deadline on
// every read, parsed once however it is split, and capped in bytes and in pieces.
import Foundation
import Testing
@testable import Vault
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized, .enabled(if: FakeVault.available, "needs KEKD_PYTHON for fake_vault.py")) struct HostileServerTests {
    /// CPU seconds (user + system) this thread has used.
    private func threadCPU() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// Sends one request the fake answers with `abuse`; returns the error, wall seconds and CPU seconds it cost.
    private func exchange(abuse: String, deadline seconds: Double) throws -> (TransportError?, wall: Double, cpu: Double) {
        let vault = try FakeVault()
        try vault.call("config", ["rules": [["path": "transit/decrypt", "abuse": abuse, "count": -1]]])
        let client = try HTTPSClient(endpoint: try Endpoint(url: vault.addr), tls: TLSSettings(caFile: vault.string("ca_pem")))
        let request = HTTPRequest(method: "POST", path: "/v1/transit/decrypt/kekd", body: Array("{}".utf8))
        let started = Date(), cpu = threadCPU()
        var failure: TransportError? = nil
        do {
            _ = try client.send(request, deadline: Date(timeIntervalSinceNow: seconds))
        } catch {
            failure = error
        }
        return (failure, Date().timeIntervalSince(started), threadCPU() - cpu)
    }

    @Test func aTrickleOfOneByteChunksEndsAtTheDeadline() throws {
        let (error, wall, cpu) = try exchange(abuse: "trickle", deadline: 1.0)
        print("trickle: \(String(describing: error)) after \(wall) s, \(cpu) s CPU")
        #expect(error == .timeout("read"), "\(String(describing: error))")
        #expect(wall >= 0.9 && wall < 1.5, "\(wall) s")
        #expect(cpu < 0.3, "\(cpu) s of CPU for a 1 s trickle")
    }

    @Test func aFloodOfOneByteChunksIsCutOffEarly() throws {
        let (error, wall, cpu) = try exchange(abuse: "flood", deadline: 2.0)
        print("flood: \(String(describing: error)) after \(wall) s, \(cpu) s CPU")
        guard case .protocolError(let message)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("tiny"), "\(message)")
        #expect(wall < 1.0 && cpu < 0.3, "\(wall) s, \(cpu) s CPU")
    }

    @Test func anEndlessBodyOfChunkExtensionsHitsTheByteCap() throws {
        let (error, wall, cpu) = try exchange(abuse: "extensions", deadline: 10.0)
        print("extensions: \(String(describing: error)) after \(wall) s, \(cpu) s CPU")
        guard case .protocolError(let message)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("larger than") || message.contains("too many tiny chunks"), "\(message)")
        // A reader without the byte cap would keep parsing until the 10 s deadline; the bound leaves room for a
        // sanitizer build on a busy machine (about 0.25 s of CPU in a plain debug build).
        #expect(wall < 5 && cpu < 3.0, "\(wall) s, \(cpu) s CPU")
    }

    @Test func endlessInterimResponsesEndWithinTheDeadline() throws {
        let (error, wall, cpu) = try exchange(abuse: "continue", deadline: 2.0)
        print("100 Continue flood: \(String(describing: error)) after \(wall) s, \(cpu) s CPU")
        #expect(error != nil)
        #expect(wall < 2.5 && cpu < 1.0, "\(wall) s, \(cpu) s CPU")
    }
}
