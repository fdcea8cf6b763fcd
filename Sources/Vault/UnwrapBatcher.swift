// Decrypt-storm protection. Unwrapped local KEKs live in a bounded LRU cache keyed by their Vault-wrapped form;
// misses go through `UnwrapBatcher`, which gives concurrent misses for the same wrapped key one shared Vault call
// and sends misses for different keys that pile up meanwhile as one `batch_input` decrypt.
import Crypto
import Dispatch
import FoundationEssentials
import Glibc
import KMS
import Locking
import Synchronization

/// Bounded LRU of wrapped local KEK → unwrapped key. Entries expire `ttl` seconds after Vault unwrapped them (use
/// does not extend them), so a kekd whose Vault access was revoked stops decrypting within the TTL even when it
/// never hears a 403. `clear()` drops everything at once (Vault said 403/404 for the key).
final class LocalKEKCache: Sendable {
    private struct Entry {
        var key: SymmetricKey
        var lastUse: UInt64
        var expires: Double
    }
    private struct Inner {
        var entries: [String: Entry] = [:]
        var clock: UInt64 = 0
        /// Bumped by `clear()`, so an unwrap that was in flight when Vault revoked access is not cached afterwards.
        var generation = 0
    }
    private let inner = LockedValue(Inner())
    let capacity: Int
    let ttl: Double
    private let now: @Sendable () -> Double

    init(capacity: Int, ttl: Double = .infinity, now: @escaping @Sendable () -> Double = LocalKEKCache.monotonicSeconds) {
        self.capacity = max(1, capacity); self.ttl = ttl; self.now = now
    }

    /// Seconds on a clock that wall-clock changes do not move.
    static func monotonicSeconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    func get(_ wrapped: String) -> SymmetricKey? {
        let t = now()
        return inner.withLock { s in
            guard var entry = s.entries[wrapped] else { return nil }
            guard t < entry.expires else {
                s.entries[wrapped] = nil
                return nil
            }
            s.clock &+= 1
            entry.lastUse = s.clock
            s.entries[wrapped] = entry
            return entry.key
        }
    }

    /// Cached and not expired, without touching its use (a look before the call, not a use).
    func contains(_ wrapped: String) -> Bool {
        let t = now()
        return inner.withLock { s in s.entries[wrapped].map { t < $0.expires } ?? false }
    }

    var generation: Int { inner.withLock { $0.generation } }

    /// Caches `key` unless the cache was cleared since `generation` was read (nil: unconditionally).
    func put(_ wrapped: String, _ key: SymmetricKey, ifGeneration generation: Int? = nil) {
        let expires = now() + ttl
        inner.withLock { s in
            if let generation, generation != s.generation { return }
            s.clock &+= 1
            s.entries[wrapped] = Entry(key: key, lastUse: s.clock, expires: expires)
            // Evict the least recently used (linear scan: only on a miss that overflows, bounded by capacity).
            while s.entries.count > capacity, let oldest = s.entries.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
                s.entries[oldest] = nil
            }
        }
    }

    /// Drops every entry (their keys are wiped when released).
    func clear() {
        inner.withLock { s in
            s.entries.removeAll()
            s.generation &+= 1
        }
    }

    /// Drops the local KEKs wrapped under Vault versions below `version` (min_decryption_version was raised).
    func removeVersions(below version: Int) {
        inner.withLock { s in
            s.entries = s.entries.filter { entry in
                guard let (_, v) = VaultKeyring.parseWrapped(Array(entry.key.utf8)) else { return false }
                return v >= version
            }
        }
    }

    var count: Int { inner.withLock { $0.entries.count } }
}

final class UnwrapBatcher: @unchecked Sendable {
    // All mutable state below is guarded by `cond`.
    private final class Pending {
        var result: Result<SymmetricKey, KMSError>?
        /// The latest deadline of the callers waiting for this key: its batch may run until then.
        var deadline: Date
        init(deadline: Date) { self.deadline = deadline }
    }
    private let cond = Condition()
    private var pending: [String: Pending] = [:]
    private var queue: [String] = []
    private var leaderActive = false

    private let cache: LocalKEKCache
    /// Unwraps a batch with one Vault call bounded by the deadline; returns one result per input, in order.
    private let unwrapMany: @Sendable ([String], Date) -> [Result<SymmetricKey, KMSError>]
    private let window: Double
    private let maxBatch: Int
    /// Vault calls made (one per batch), for tests and metrics.
    let batches = Atomic<Int>(0)

    init(cache: LocalKEKCache, window: Double = 0.002, maxBatch: Int = 128,
         unwrapMany: @escaping @Sendable ([String], Date) -> [Result<SymmetricKey, KMSError>]) {
        self.cache = cache; self.window = window; self.maxBatch = max(1, maxBatch); self.unwrapMany = unwrapMany
    }

    /// The unwrapped key for `wrapped`, from the cache or Vault. Waits at most until `deadline`, or until `context` says
    /// the caller is gone.
    func unwrap(_ wrapped: String, deadline: Date, context: CallContext = .unbounded) throws(KMSError) -> SymmetricKey {
        cond.lock()
        if let key = cache.get(wrapped) { cond.unlock(); return key }
        cond.unlock()
        return try unwrapAll([wrapped], deadline: deadline, context: context)[0].get()
    }

    /// The unwrapped keys for `list`, in order, from the cache or Vault: the misses join one pending batch (up to
    /// `maxBatch` per Vault call), shared with concurrent Decrypts missing the same keys. Waits at most until
    /// `deadline`; what is still missing then fails with UNAVAILABLE. A caller that cancels or reaches its own deadline
    /// stops waiting (CANCELLED / DEADLINE_EXCEEDED; cancellation is seen within `CallContext.cancellationCheckSeconds`);
    /// its keys stay queued: the batch fills the cache for the next caller.
    func unwrapAll(_ list: [String], deadline: Date, context: CallContext = .unbounded) -> [Result<SymmetricKey, KMSError>] {
        var results = [Result<SymmetricKey, KMSError>?](repeating: nil, count: list.count)
        var waiting: [(index: Int, entry: Pending)] = []
        cond.lock()
        for (i, wrapped) in list.enumerated() {
            if let key = cache.get(wrapped) { results[i] = .success(key); continue }
            if let existing = pending[wrapped] {
                existing.deadline = max(existing.deadline, deadline)
                waiting.append((i, existing))
            } else {
                let entry = Pending(deadline: deadline)
                pending[wrapped] = entry
                queue.append(wrapped)
                waiting.append((i, entry))
            }
        }
        while true {
            waiting.removeAll { item in
                guard let result = item.entry.result else { return false }
                results[item.index] = result
                return true
            }
            if waiting.isEmpty { break }
            if !leaderActive && !queue.isEmpty {
                // Start one batch; whoever is still waiting afterwards starts the next. On its own thread, so this
                // caller can stop waiting when cancelled while the batch still fills the cache for the others.
                leaderActive = true
                startThread(name: "kekd-vault-unwrap") { [self] in
                    runOneBatch()
                    cond.lock()
                    leaderActive = false
                    cond.broadcast()
                    cond.unlock()
                }
                continue
            }
            let left = min(deadline.timeIntervalSinceNow, context.secondsLeft() ?? .infinity)
            if cond.wait(seconds: context.cancellation == nil ? left : min(left, CallContext.cancellationCheckSeconds)) { continue }
            if let stopped = context.stoppedWaiting(for: "Vault to unwrap the local KEK") {
                for item in waiting { results[item.index] = .failure(stopped) }
                break
            }
            if deadline.timeIntervalSinceNow <= 0 && waiting.allSatisfy({ $0.entry.result == nil }) {
                for item in waiting {
                    results[item.index] = .failure(KMSError(.unavailable, "timed out waiting for Vault to unwrap the local KEK"))
                }
                break
            }
        }
        cond.unlock()
        return results.map { $0 ?? .failure(KMSError(.internalError, "local KEK not unwrapped")) }
    }

    /// One Vault call for the oldest queued keys, bounded by the latest deadline of their callers: the caller that
    /// happened to start it may have the shortest deadline, and its deadline must not cut the others' request short.
    private func runOneBatch() {
        if window > 0 { sleep(seconds: window) }  // let concurrent misses join this batch
        cond.lock()
        let batch = Array(queue.prefix(maxBatch))
        queue.removeFirst(batch.count)
        let deadline = batch.compactMap { pending[$0]?.deadline }.max() ?? Date()
        cond.unlock()
        guard !batch.isEmpty else { return }
        batches.add(1, ordering: .relaxed)
        let generation = cache.generation
        var results = unwrapMany(batch, deadline)
        if results.count != batch.count {
            results = Array(repeating: .failure(KMSError(.internalError, "unwrap result count mismatch")), count: batch.count)
        }
        for (wrapped, result) in zip(batch, results) {
            if case .success(let key) = result { cache.put(wrapped, key, ifGeneration: generation) }
        }
        cond.lock()
        for (wrapped, result) in zip(batch, results) {
            pending[wrapped]?.result = result
            pending[wrapped] = nil
        }
        cond.broadcast()
        cond.unlock()
    }
}
