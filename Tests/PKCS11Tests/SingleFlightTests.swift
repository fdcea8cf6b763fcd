import Crypto
import KMS
import Locking
import Synchronization
import Testing
@testable import PKCS11

@Suite struct SingleFlightTests {
    @Test func concurrentMissesShareOneUnwrap() throws {
        let flights = SingleFlight()
        let runs = Atomic<Int>(0)
        let key = try SymmetricKey.random()
        let done = Condition()
        let finished = LockedValue(0)
        for _ in 0..<16 {
            startThread(name: "flight") {
                let result = flights.run("wrapped", deadline: monotonicSeconds() + 5) {
                    runs.add(1, ordering: .relaxed)
                    sleep(seconds: 0.2)   // the others arrive meanwhile
                    return .success(key)
                }
                #expect((try? result.get())?.bytes == key.bytes)
                finished.withLock { $0 += 1 }
                done.lock(); done.signal(); done.unlock()
            }
        }
        done.lock()
        while finished.withLock({ $0 }) < 16 { _ = done.wait(seconds: 0.1) }
        done.unlock()
        #expect(runs.load(ordering: .relaxed) <= 2)   // one, or two if a thread started after the first finished
    }

    @Test func waitersGiveUpAtTheirDeadline() {
        let flights = SingleFlight()
        startThread(name: "slow") { _ = flights.run("k", deadline: monotonicSeconds() + 5) { sleep(seconds: 1); return .failure(KMSError(.unavailable, "x")) } }
        sleep(seconds: 0.1)
        let started = monotonicSeconds()
        let result = flights.run("k", deadline: monotonicSeconds() + 0.2) { .failure(KMSError(.internalError, "must not run")) }
        #expect(monotonicSeconds() - started < 0.8)
        guard case .failure(let error) = result else { Issue.record("expected a timeout"); return }
        #expect(error.code == .unavailable && error.message.contains("timed out"))
    }

    @Test func cacheEvictsTheLeastRecentlyUsed() throws {
        let cache = UnwrappedKEKCache(capacity: 2)
        let a = try SymmetricKey.random(), b = try SymmetricKey.random(), c = try SymmetricKey.random()
        cache.put("a", a)
        cache.put("b", b)
        _ = cache.get("a")
        cache.put("c", c)
        #expect(cache.get("b") == nil && cache.get("a")?.bytes == a.bytes && cache.get("c")?.bytes == c.bytes)
        #expect(cache.count == 2)
        // A local KEK cached with its parsed wrapped form hands it back: a cached Decrypt parses nothing.
        let parsed = WrappedLocalKEK(version: 3, keyObjectID: [7], iv: [UInt8](repeating: 1, count: 12), sealed: [2])
        cache.put(parsed.text, a, parsed: parsed)
        #expect(cache.lookup(parsed.text)?.parsed == parsed && cache.lookup("c")?.parsed == nil)
    }
}
