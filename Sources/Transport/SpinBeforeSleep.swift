// Waiting for a socket by polling it for a few microseconds before sleeping in poll(2).
//
// Why: a thread woken from poll(2) pays for its CPU's trip through idle and back. Where that trip is slow (a VM guest
// that halts without polling first, as the one kekd's benchmarks ran on) one wake-up costs the thread about 10 µs of
// CPU and the round trip 30-60 µs of latency, more than a whole KMS call, while a peer that answers within
// microseconds (kekctl's client and kekd, for each other, under load) would find the other side still awake. The
// window adapts as the kernel's haltpoll governor's does: it grows while waits end within the limit and shrinks to
// nothing while they are longer, so a connection called now and then (kube-apiserver's Status once a minute) never
// spins. Each round of the spin yields the CPU, so a thread waiting to run on this CPU (etcd, kube-apiserver, the
// peer itself) goes first.
import Glibc

public struct SpinBeforeSleep: Sendable {
    /// Longer than the peer's wake-up on such a VM (so both sides of a busy connection settle into catching each
    /// other awake), short next to any wait that is not part of a burst.
    public static let defaultLimitNanos: UInt64 = 50_000

    /// Waits longer than this shrink the window, and it never grows beyond it; 0 never spins.
    public let limitNanos: UInt64
    /// How long the next wait spins before it sleeps.
    public private(set) var windowNanos: UInt64 = 0

    public init(limitNanos: UInt64 = defaultLimitNanos) { self.limitNanos = limitNanos }

    /// The first window: a fifth of the limit, so a burst reaches the limit after four short waits.
    var startNanos: UInt64 { max(1, limitNanos / 5) }

    /// After a wait that slept: `waitedNanos` from its start (the spin included) until poll returned.
    mutating func slept(waitedNanos: UInt64) {
        guard limitNanos > 0 else { return }
        if waitedNanos <= limitNanos {
            // Spinning longer would have caught it without a sleep.
            windowNanos = windowNanos == 0 ? startNanos : min(limitNanos, windowNanos * 2)
        } else {
            windowNanos /= 2
            if windowNanos < startNanos { windowNanos = 0 }
        }
    }

    /// poll(2) on `fds`, spinning first for the current window (poll with a zero timeout, then sched_yield) and
    /// adapting the window to how long the wait took. Returns what poll returned; EINTR is left to the caller.
    public mutating func poll(_ fds: inout [pollfd], timeoutMillis: Int32) -> Int32 {
        let count = nfds_t(fds.count)
        guard limitNanos > 0 else { return Glibc.poll(&fds, count, timeoutMillis) }
        let start = Posix.monotonicNanos()
        if windowNanos > 0 {
            let end = start &+ windowNanos
            repeat {
                let ready = Glibc.poll(&fds, count, 0)
                if ready != 0 { return ready }  // caught awake (or an error for the caller): the window stays
                sched_yield()
            } while Posix.monotonicNanos() < end
        }
        let ready = Glibc.poll(&fds, count, timeoutMillis)
        slept(waitedNanos: Posix.monotonicNanos() &- start)
        return ready
    }
}
