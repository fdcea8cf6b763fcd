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
final class SingleFlight: @unchecked Sendable {
    // `flights` is guarded by `cond`.
    private final class Flight { var result: Result<SymmetricKey, KMSError>? }
    private let cond = Condition()
    private var flights: [String: Flight] = [:]

    func run(_ key: String, deadline: Double, _ body: () -> Result<SymmetricKey, KMSError>) -> Result<SymmetricKey, KMSError> {
        cond.lock()
        if let flight = flights[key] {
            while flight.result == nil {
                let left = deadline - monotonicSeconds()
                if left <= 0 || (!cond.wait(seconds: left) && flight.result == nil) {
                    cond.unlock()
                    return .failure(KMSError(.unavailable, "timed out waiting for the PKCS#11 token to unwrap the local KEK"))
                }
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
