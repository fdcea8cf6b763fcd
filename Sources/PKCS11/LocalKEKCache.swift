// Unwrapped local KEKs by their wrapped text, and one HSM round per wrapped KEK however many Decrypts miss it at
// once. (The Vault backend keeps its own cache with Vault-specific TTL/versions and batching.)
import Crypto
import KMS
import Locking

/// Bounded LRU of wrapped local KEK → unwrapped key, with the wrapped form parsed (a cached Decrypt then needs no
/// parse of its annotation).
final class UnwrappedKEKCache: Sendable {
    private struct Entry { var key: SymmetricKey; var parsed: WrappedLocalKEK?; var lastUse: UInt64 }
    private struct Inner { var entries: [String: Entry] = [:]; var clock: UInt64 = 0 }
    private let inner = LockedValue(Inner())
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    func get(_ wrapped: String) -> SymmetricKey? { lookup(wrapped)?.key }

    /// The key and, when it was given to `put`, the parsed wrapped form.
    func lookup(_ wrapped: String) -> (key: SymmetricKey, parsed: WrappedLocalKEK?)? {
        inner.withLock { s in
            guard var entry = s.entries[wrapped] else { return nil }
            s.clock &+= 1
            entry.lastUse = s.clock
            s.entries[wrapped] = entry
            return (entry.key, entry.parsed)
        }
    }

    func put(_ wrapped: String, _ key: SymmetricKey, parsed: WrappedLocalKEK? = nil) {
        inner.withLock { s in
            s.clock &+= 1
            s.entries[wrapped] = Entry(key: key, parsed: parsed, lastUse: s.clock)
            // Linear scan only on an overflowing miss, bounded by capacity.
            while s.entries.count > capacity, let oldest = s.entries.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
                s.entries[oldest] = nil
            }
        }
    }

    /// Without touching its use (a look before the call, not a use).
    func contains(_ wrapped: String) -> Bool { inner.withLock { $0.entries[wrapped] != nil } }

    var count: Int { inner.withLock { $0.entries.count } }
}

/// Concurrent misses for one wrapped KEK share one unwrap: the first caller runs it, the others wait for its result.
/// A waiter leaves when its caller cancels or its deadline passes (CANCELLED / DEADLINE_EXCEEDED), or after `timeout`
/// (UNAVAILABLE); the unwrap goes on for the others and fills the cache. The first caller runs the token operation
/// itself and so returns when the token does: PKCS#11 cannot abandon a `C_Decrypt`, and a thread per operation
/// would let a stalled token collect threads without bound.
final class SingleFlight: @unchecked Sendable {
    // `flights` is guarded by `cond`.
    private final class Flight { var result: Result<SymmetricKey, KMSError>? }
    private let cond = Condition()
    private var flights: [String: Flight] = [:]
    static let waitingFor = "the PKCS#11 token to unwrap the local KEK"

    func run(_ key: String, context: CallContext, timeout: Double,
             _ body: () -> Result<SymmetricKey, KMSError>) -> Result<SymmetricKey, KMSError> {
        if let stopped = context.stoppedWaiting(for: Self.waitingFor) { return .failure(stopped) }
        cond.lock()
        if let flight = flights[key] {
            let giveUp = CallContext.monotonicNanos() &+ UInt64(max(0, timeout) * 1e9)
            while flight.result == nil {
                let now = CallContext.monotonicNanos()
                if let stopped = context.stoppedWaiting(for: Self.waitingFor, now: now) {
                    cond.unlock()
                    return .failure(stopped)
                }
                guard now < giveUp else {
                    cond.unlock()
                    return .failure(KMSError(.unavailable, "timed out waiting for \(Self.waitingFor)"))
                }
                var seconds = Double(min(giveUp, context.deadline ?? giveUp) &- now) / 1e9
                if context.cancellation != nil { seconds = min(seconds, CallContext.cancellationCheckSeconds) }
                _ = cond.wait(seconds: seconds)
            }
            cond.unlock()
            return flight.result!
        }
        let flight = Flight()
        flights[key] = flight
        cond.unlock()
        let result = body()
        cond.lock()
        flight.result = result
        flights[key] = nil
        cond.broadcast()
        cond.unlock()
        return result
    }
}
