// What travels with one call from the server edge to the backend: the caller's deadline and whether the caller
// still wants the answer (RST_STREAM, connection closed). A value, so a call answered inline allocates nothing; only
// a call that can be cancelled while it waits (one on the worker pool) carries a `CallCancellation`.
import Glibc
import Locking
import Synchronization

public struct CallContext: Sendable {
    /// CLOCK_MONOTONIC nanoseconds by which the caller wants its answer (grpc-timeout from arrival); nil = none.
    public var deadline: UInt64?
    public var cancellation: CallCancellation?

    public init(deadline: UInt64? = nil, cancellation: CallCancellation? = nil) {
        self.deadline = deadline
        self.cancellation = cancellation
    }

    /// No deadline, not cancellable: tools and tests that call a backend directly.
    public static let unbounded = CallContext()

    public var isCancelled: Bool { cancellation?.isCancelled ?? false }

    /// Seconds left before the deadline (negative once past), or nil without one.
    public func secondsLeft(now: UInt64 = CallContext.monotonicNanos()) -> Double? {
        deadline.map { Double(Int64(bitPattern: $0 &- now)) / 1e9 }
    }

    /// `bound` seconds from now, shortened to the caller's deadline: what a backend gives one network request.
    public func boundedSeconds(_ bound: Double) -> Double {
        secondsLeft().map { min(bound, $0) } ?? bound
    }

    /// The clock `deadline` is on.
    public static func monotonicNanos() -> UInt64 { Locking.monotonicNanos() }

    /// Whether the caller has stopped wanting the answer, as the error its call then ends with: CANCELLED once
    /// cancelled, DEADLINE_EXCEEDED once past its deadline, nil while it still waits. For a backend call waiting on
    /// work it shares with other callers (a token unwrap, a Vault batch): it leaves, the work goes on for the others.
    public func stoppedWaiting(for what: String, now: UInt64 = CallContext.monotonicNanos()) -> KMSError? {
        if isCancelled { return KMSError(.cancelled, "call cancelled while waiting for \(what)") }
        if let deadline, Int64(bitPattern: deadline &- now) <= 0 {
            return KMSError(.deadlineExceeded, "deadline passed while waiting for \(what)")
        }
        return nil
    }

    /// How often a waiting call looks at its cancellation (a flag set by the connection, with no wake-up of its own).
    public static let cancellationCheckSeconds = 0.02
}

/// Set once by the connection that owns the call; read by whoever is doing the call's work.
public final class CallCancellation: Sendable {
    private let cancelled = Atomic<Bool>(false)
    public init() {}
    public var isCancelled: Bool { cancelled.load(ordering: .acquiring) }
    public func cancel() { cancelled.store(true, ordering: .releasing) }
}
