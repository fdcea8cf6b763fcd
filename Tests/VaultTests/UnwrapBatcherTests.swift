import Crypto
import Foundation
import KMS
import Locking
import Testing
@testable import Vault

@Suite struct UnwrapBatcherTests {
    /// A stand-in for Vault's batch decrypt: records each batch, takes `latency`, fails inputs starting with "bad".
    final class FakeUnwrap: Sendable {
        let batches = LockedValue<[[String]]>([])
        let latency: Double
        init(latency: Double) { self.latency = latency }
        func callAsFunction(_ wrapped: [String]) -> [Result<SymmetricKey, KMSError>] {
            batches.withLock { $0.append(wrapped) }
            Thread.sleep(forTimeInterval: latency)
            return wrapped.map { w in
                if w.hasPrefix("bad") { return .failure(KMSError(.invalidArgument, "bad")) }
                guard let key = try? SymmetricKey(bytes: SHA256.hash(Array(w.utf8))) else { return .failure(KMSError(.internalError, "key")) }
                return .success(key)
            }
        }
    }

    @Test func concurrentMissesAreSingleFlightedAndBatched() throws {
        let fake = FakeUnwrap(latency: 0.05)
        let cache = LocalKEKCache(capacity: 100)
        let batcher = UnwrapBatcher(cache: cache) { names, _ in fake(names) }
        let failures = Counter()
        let group = DispatchGroup()
        for i in 0..<400 {
            group.enter()
            Thread.detachNewThread {
                let name = "k\(i % 40)"
                let key = try? batcher.unwrap(name, deadline: Date(timeIntervalSinceNow: 5))
                if key?.bytes != SHA256.hash(Array(name.utf8)) { failures.add() }
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 10) == .success)
        let batches = fake.batches.withLock { $0 }
        #expect(failures.value == 0)
        #expect(batches.count <= 5, "400 misses of 40 keys took \(batches.count) Vault calls")
        #expect(batches.flatMap { $0 }.count == 40, "each wrapped key went to Vault exactly once")
        #expect(cache.count == 40)
        #expect(batcher.batches.load(ordering: .relaxed) == batches.count)
    }

    /// The start-up warm-up: many keys in one call, a concurrent Decrypt of one of them joins it, cached ones and
    /// per-item failures come back in order.
    @Test func unwrapAllSendsTheMissesAsOneBatchSharedWithConcurrentMisses() throws {
        let fake = FakeUnwrap(latency: 0.05)
        let cache = LocalKEKCache(capacity: 100)
        let batcher = UnwrapBatcher(cache: cache) { names, _ in fake(names) }
        cache.put("k0", try SymmetricKey(bytes: SHA256.hash(Array("k0".utf8))))
        let names = (0..<40).map { "k\($0)" } + ["bad1"]
        let joined = DispatchGroup()
        joined.enter()
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: 0.01)  // inside the first batch's gathering window or waiting on it
            _ = try? batcher.unwrap("k7", deadline: Date(timeIntervalSinceNow: 5))
            joined.leave()
        }
        let results = batcher.unwrapAll(names, deadline: Date(timeIntervalSinceNow: 5))
        #expect(joined.wait(timeout: .now() + 5) == .success)
        #expect(results.count == names.count)
        for (name, result) in zip(names, results) where name != "bad1" {
            #expect((try? result.get())?.bytes == SHA256.hash(Array(name.utf8)), "\(name)")
        }
        if case .success = results.last! { Issue.record("bad1 unwrapped") }
        let batches = fake.batches.withLock { $0 }
        #expect(batches.count == 1, "\(batches.count) Vault calls")
        #expect(batches.flatMap { $0 }.count == 40, "k0 was cached; every other key went to Vault once")
    }

    @Test func perItemFailuresStayPerItemAndAreNotCached() throws {
        let fake = FakeUnwrap(latency: 0)
        let cache = LocalKEKCache(capacity: 10)
        let batcher = UnwrapBatcher(cache: cache) { names, _ in fake(names) }
        #expect(throws: KMSError(.invalidArgument, "bad")) { try batcher.unwrap("bad-1", deadline: Date(timeIntervalSinceNow: 1)) }
        _ = try batcher.unwrap("good", deadline: Date(timeIntervalSinceNow: 1))
        #expect(throws: KMSError.self) { try batcher.unwrap("bad-1", deadline: Date(timeIntervalSinceNow: 1)) }
        #expect(fake.batches.withLock { $0.count } == 3 && cache.count == 1)
    }

    @Test func waitersGiveUpAtTheirDeadline() {
        let fake = FakeUnwrap(latency: 0.5)
        let batcher = UnwrapBatcher(cache: LocalKEKCache(capacity: 10)) { names, _ in fake(names) }
        Thread.detachNewThread { _ = try? batcher.unwrap("slow", deadline: Date(timeIntervalSinceNow: 5)) }
        Thread.sleep(forTimeInterval: 0.05)
        let started = Date()
        #expect(throws: KMSError(.unavailable, "timed out waiting for Vault to unwrap the local KEK")) {
            try batcher.unwrap("slow", deadline: Date(timeIntervalSinceNow: 0.1))
        }
        #expect(Date().timeIntervalSince(started) < 0.4)
    }

    /// The batch's Vault request runs until the latest deadline among the callers waiting for its keys, not the
    /// deadline of whichever caller happened to start it (models a Vault that needs 0.4 s and a request cut off at its
    /// deadline).
    @Test func aShortDeadlineThatStartsTheBatchDoesNotCutTheOthersShort() throws {
        let requestDeadlines = LockedValue<[Date]>([])
        let batcher = UnwrapBatcher(cache: LocalKEKCache(capacity: 10), window: 0.1) { names, deadline in
            requestDeadlines.withLock { $0.append(deadline) }
            Thread.sleep(forTimeInterval: 0.4)
            guard Date() <= deadline else { return names.map { _ in .failure(KMSError(.unavailable, "Vault request timed out")) } }
            return names.map { name in
                guard let key = try? SymmetricKey(bytes: SHA256.hash(Array(name.utf8))) else { return .failure(KMSError(.internalError, "key")) }
                return .success(key)
            }
        }
        let short = LockedValue<KMSError?>(nil)
        let started = DispatchGroup()
        started.enter()
        Thread.detachNewThread {
            started.leave()
            do throws(KMSError) { _ = try batcher.unwrap("k", deadline: Date(timeIntervalSinceNow: 0.2)) } catch { short.withLock { $0 = error } }
        }
        started.wait()
        Thread.sleep(forTimeInterval: 0.02)  // inside the batch's gathering window
        let longDeadline = Date(timeIntervalSinceNow: 5)
        let key = try batcher.unwrap("k", deadline: longDeadline)
        #expect(key.bytes == SHA256.hash(Array("k".utf8)))
        #expect(requestDeadlines.withLock { $0.count } == 1)
        #expect(requestDeadlines.withLock { $0.first } == longDeadline)
        #expect(short.withLock { $0 }?.code == .unavailable, "the short caller still leaves at its own deadline")
    }

    /// The caller's own deadline or cancellation ends its wait with the caller's code, as in the PKCS#11 backend; the
    /// batch goes on and fills the cache for the next caller.
    @Test func aCallerThatCancelsOrReachesItsDeadlineLeavesWithItsOwnCode() throws {
        let fake = FakeUnwrap(latency: 2)  // far longer than the callers stay, even on a loaded machine
        let cache = LocalKEKCache(capacity: 10)
        let batcher = UnwrapBatcher(cache: cache) { names, _ in fake(names) }
        let far = Date(timeIntervalSinceNow: 5)
        var started = Date()
        #expect(throws: KMSError(.deadlineExceeded, "deadline passed while waiting for Vault to unwrap the local KEK")) {
            try batcher.unwrap("slow", deadline: far, context: CallContext(deadline: CallContext.monotonicNanos() + 100_000_000))
        }
        #expect(Date().timeIntervalSince(started) < 1)
        let cancellation = CallCancellation()
        // Its own thread: the global queue's threads may all be busy in parallel tests.
        Thread.detachNewThread { Thread.sleep(forTimeInterval: 0.1); cancellation.cancel() }
        started = Date()
        #expect(throws: KMSError(.cancelled, "call cancelled while waiting for Vault to unwrap the local KEK")) {
            try batcher.unwrap("slow", deadline: far, context: CallContext(cancellation: cancellation))
        }
        #expect(Date().timeIntervalSince(started) < 1)
        #expect(try batcher.unwrap("slow", deadline: far).bytes == SHA256.hash(Array("slow".utf8)))
        #expect(fake.batches.withLock { $0.count } == 1, "the callers that left did not cost a second Vault call")
    }

    @Test func cacheEvictsTheLeastRecentlyUsed() throws {
        let cache = LocalKEKCache(capacity: 2)
        cache.put("a", try SymmetricKey.random())
        cache.put("b", try SymmetricKey.random())
        _ = cache.get("a")
        cache.put("c", try SymmetricKey.random())
        #expect(cache.get("a") != nil && cache.get("b") == nil && cache.get("c") != nil && cache.count == 2)
    }
}
