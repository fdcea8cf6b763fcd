// Retry timing and the circuit breaker. Both are small and clock-injectable so tests can drive them exactly.
import FoundationEssentials
import Glibc
import Locking

/// Exponential backoff with full jitter: attempt n (0-based) waits uniform(0, min(cap, base * 2^n)).
public struct Backoff: Sendable, Equatable {
    public var base: Double
    public var cap: Double
    public var maxAttempts: Int

    public init(base: Double = 0.05, cap: Double = 0.4, maxAttempts: Int = 3) {
        self.base = base; self.cap = cap; self.maxAttempts = maxAttempts
    }

    /// Upper bound of the delay before retry number `retry` (1 = first retry).
    public func ceiling(retry: Int) -> Double {
        let exponent = Double(min(max(retry - 1, 0), 30))
        return min(cap, base * pow(2, exponent))
    }

    public func delay(retry: Int, random: Double = Double.random(in: 0...1)) -> Double {
        ceiling(retry: retry) * min(max(random, 0), 1)
    }
}

/// Opens after `failureThreshold` consecutive network failures; while open, calls fail at once. After the open
/// period one trial call is let through (half-open); its success closes the breaker, its failure re-opens it for
/// twice as long (up to `maxOpenSeconds`). An unreachable Vault therefore costs one timeout, not one per call.
public final class CircuitBreaker: Sendable {
    public enum State: Sendable, Equatable { case closed, open(until: Double), halfOpen }

    private struct Inner {
        var state: State = .closed
        var consecutiveFailures = 0
        var openSeconds: Double
        var trialInFlight = false
    }

    private let inner: LockedValue<Inner>
    public let failureThreshold: Int
    public let minOpenSeconds: Double
    public let maxOpenSeconds: Double
    private let now: @Sendable () -> Double

    public init(failureThreshold: Int = 1, minOpenSeconds: Double = 1, maxOpenSeconds: Double = 30,
                now: @escaping @Sendable () -> Double = { Date().timeIntervalSinceReferenceDate }) {
        self.failureThreshold = max(1, failureThreshold)
        self.minOpenSeconds = minOpenSeconds
        self.maxOpenSeconds = max(minOpenSeconds, maxOpenSeconds)
        self.now = now
        inner = LockedValue(Inner(openSeconds: minOpenSeconds))
    }

    public var state: State { inner.withLock { $0.state } }

    /// True if a call may go out now. In half-open state only one trial call is admitted.
    public func allow() -> Bool {
        let t = now()
        return inner.withLock { s in
            switch s.state {
            case .closed: return true
            case .open(let until):
                guard t >= until else { return false }
                s.state = .halfOpen
                s.trialInFlight = true
                return true
            case .halfOpen:
                if s.trialInFlight { return false }
                s.trialInFlight = true
                return true
            }
        }
    }

    public func recordSuccess() {
        inner.withLock { s in
            s.state = .closed
            s.consecutiveFailures = 0
            s.openSeconds = minOpenSeconds
            s.trialInFlight = false
        }
    }

    public func recordFailure() {
        let t = now()
        inner.withLock { s in
            s.consecutiveFailures += 1
            switch s.state {
            case .halfOpen:
                s.openSeconds = min(maxOpenSeconds, s.openSeconds * 2)
                s.state = .open(until: t + s.openSeconds)
            case .closed where s.consecutiveFailures >= failureThreshold:
                s.state = .open(until: t + s.openSeconds)
            default: break
            }
            s.trialInFlight = false
        }
    }
}
