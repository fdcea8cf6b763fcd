// A pthread mutex with condition variables (on CLOCK_MONOTONIC). Swift's Mutex has no condition variable, and
// fail-closed callers must sleep until the writer has synced their record.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

final class MonitorLock: @unchecked Sendable {
    fileprivate let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil) }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}

final class MonitorCondition: @unchecked Sendable {
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    init() {
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }
    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }
    /// The caller holds `lock`.
    func wait(_ lock: MonitorLock) { pthread_cond_wait(cond, lock.mutex) }
    /// The caller holds `lock`; returns at a wakeup or at `deadline` (monotonicSeconds()) at the latest.
    func wait(_ lock: MonitorLock, until deadline: Double) {
        let clamped = min(deadline, monotonicSeconds() + 3600)
        let whole = clamped.rounded(.down)
        var spec = timespec(tv_sec: Int(whole), tv_nsec: min(Int((clamped - whole) * 1e9), 999_999_999))
        pthread_cond_timedwait(cond, lock.mutex, &spec)
    }
    func signal() { pthread_cond_signal(cond) }
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
