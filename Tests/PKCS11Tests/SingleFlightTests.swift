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
                let result = flights.run("wrapped", context: .unbounded, timeout: 5) {
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

    @Test func waitersGiveUpAfterTheTimeout() {
        let flights = SingleFlight()
        startThread(name: "slow") { _ = flights.run("k", context: .unbounded, timeout: 5) { sleep(seconds: 1); return .failure(KMSError(.unavailable, "x")) } }
        sleep(seconds: 0.1)
        let started = monotonicSeconds()
        let result = flights.run("k", context: .unbounded, timeout: 0.2) { .failure(KMSError(.internalError, "must not run")) }
        #expect(monotonicSeconds() - started < 0.8)
        guard case .failure(let error) = result else { Issue.record("expected a timeout"); return }
        #expect(error.code == .unavailable && error.message.contains("timed out"))
    }

    /// A token operation that stalls until the test releases it: a waiter whose caller cancels or passes its deadline
    /// leaves at once with CANCELLED / DEADLINE_EXCEEDED, while the operation runs on and another waiter still gets
    /// its result. One token operation in all.
    @Test func aWaiterLeavesAtItsCallersDeadlineOrCancellationWithoutDisturbingTheOthers() throws {
        let flights = SingleFlight()
        let key = try SymmetricKey.random()
        let released = Atomic<Bool>(false)
        let runs = Atomic<Int>(0)
        let leader = LockedValue<Result<SymmetricKey, KMSError>?>(nil)
        let patient = LockedValue<Result<SymmetricKey, KMSError>?>(nil)
        startThread(name: "leader") {
            let result = flights.run("w", context: .unbounded, timeout: 30) {
                runs.add(1, ordering: .relaxed)
                while !released.load(ordering: .relaxed) { sleep(seconds: 0.005) }   // the stalled token
                return .success(key)
            }
            leader.withLock { $0 = result }
        }
        while runs.load(ordering: .relaxed) == 0 { sleep(seconds: 0.005) }
        startThread(name: "patient") {
            let result = flights.run("w", context: .unbounded, timeout: 30) { .failure(KMSError(.internalError, "must not run")) }
            patient.withLock { $0 = result }
        }
        func failure(_ result: Result<SymmetricKey, KMSError>) -> KMSError? {
            if case .failure(let error) = result { return error } else { return nil }
        }

        var started = monotonicSeconds()
        let late = flights.run("w", context: CallContext(deadline: CallContext.monotonicNanos() + 150_000_000), timeout: 30) {
            .failure(KMSError(.internalError, "must not run"))
        }
        var waited = monotonicSeconds() - started
        #expect(failure(late) == KMSError(.deadlineExceeded, "deadline passed while waiting for \(SingleFlight.waitingFor)"))
        #expect(waited >= 0.1 && waited < 1, "left after \(waited) s for a 0.15 s deadline")

        let cancellation = CallCancellation()
        startThread(name: "cancel") { sleep(seconds: 0.15); cancellation.cancel() }
        started = monotonicSeconds()
        let gone = flights.run("w", context: CallContext(deadline: CallContext.monotonicNanos() + 30_000_000_000, cancellation: cancellation),
                               timeout: 30) { .failure(KMSError(.internalError, "must not run")) }
        waited = monotonicSeconds() - started
        #expect(failure(gone) == KMSError(.cancelled, "call cancelled while waiting for \(SingleFlight.waitingFor)"))
        #expect(waited >= 0.1 && waited < 1, "left \(waited) s after starting, cancelled at 0.15 s")

        // A caller already gone never starts a token operation of its own.
        let cancelled = CallCancellation()
        cancelled.cancel()
        #expect(failure(flights.run("other", context: CallContext(cancellation: cancelled), timeout: 30) {
            runs.add(1, ordering: .relaxed); return .success(key)
        })?.code == .cancelled)

        // The operation and the waiter that stayed are undisturbed.
        #expect(leader.withLock { $0 } == nil && patient.withLock { $0 } == nil, "the stalled operation ended early")
        released.store(true, ordering: .relaxed)
        let end = monotonicSeconds() + 5
        while (leader.withLock { $0 } == nil || patient.withLock { $0 } == nil) && monotonicSeconds() < end { sleep(seconds: 0.005) }
        #expect((try? leader.withLock { $0 }?.get())?.bytes == key.bytes)
        #expect((try? patient.withLock { $0 }?.get())?.bytes == key.bytes)
        #expect(runs.load(ordering: .relaxed) == 1)
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
