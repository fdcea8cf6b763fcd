// Threads, a plain lock and a condition variable over pthreads: what kekd used Foundation's Thread, NSLock and
// NSCondition for. Foundation's versions pull ICU and FoundationInternationalization into the process (about 3 MiB
// resident before any work, issue 12); these are a few lines each, and ThreadSanitizer sees every one of them.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Stack reserved for kekd's threads. They parse frames and run AES-GCM, nothing recursive; 8 MiB (glibc's default)
/// only costs address space, but a smaller reservation keeps `pmap` honest. Sanitizer builds need more.
public let defaultThreadStackSize = 1 << 20

/// Starts a detached thread running `body`. `name` shows in `top -H` and `/proc/PID/task/*/comm` (15 bytes kept).
/// Returns false (and runs nothing) when the system refuses a new thread.
@discardableResult
public func startThread(name: String, stackSize: Int = defaultThreadStackSize,
                        _ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box { let body: @Sendable () -> Void; let name: String; init(_ b: @escaping @Sendable () -> Void, _ n: String) { body = b; name = n } }
    let context = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attributes, max(stackSize, Int(PTHREAD_STACK_MIN)))
    var thread = pthread_t()
    let rc = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        #if canImport(Glibc)
        _ = setThreadName(pthread_self(), String(decoding: box.name.utf8.prefix(15), as: UTF8.self))
        #endif
        box.body()
        return nil
    }, context)
    if rc != 0 { Unmanaged<Box>.fromOpaque(context).release(); return false }
    return true
}

#if canImport(Glibc)
// glibc declares it only under _GNU_SOURCE, which the Glibc module map does not set.
@_silgen_name("pthread_setname_np")
private func setThreadName(_ thread: pthread_t, _ name: UnsafePointer<CChar>) -> Int32
#endif

/// Returns free heap pages to the kernel (glibc's malloc_trim): after a burst, freed memory otherwise stays
/// resident as the allocator's high-water mark.
public func releaseFreeHeapMemory() {
    #if canImport(Glibc)
    _ = mallocTrim(0)
    #endif
}

#if canImport(Glibc)
@_silgen_name("malloc_trim")
private func mallocTrim(_ pad: Int) -> Int32
#endif

/// Blocks the calling thread for `seconds` (fractions allowed); returns early only if `seconds` <= 0.
public func sleep(seconds: Double) {
    guard seconds > 0 else { return }
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}

/// A non-recursive mutex for code that must hold a lock across a few statements rather than one closure.
public final class Lock: @unchecked Sendable {
    fileprivate let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    public func withLock<Result, E: Error>(_ body: () throws(E) -> Result) throws(E) -> Result {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A lock with a condition variable (NSCondition's shape). Timed waits use the monotonic clock, so a wall-clock
/// step (NTP, an operator's `date -s`) neither cuts a wait short nor stretches it.
public final class Condition: @unchecked Sendable {
    private let lockValue = Lock()
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deinitialize(count: 1)
        cond.deallocate()
    }

    public func lock() { lockValue.lock() }
    public func unlock() { lockValue.unlock() }
    public func signal() { pthread_cond_signal(cond) }
    public func broadcast() { pthread_cond_broadcast(cond) }

    /// Waits (the lock held) until signalled. Spurious wake-ups happen: callers re-check their predicate.
    public func wait() { pthread_cond_wait(cond, lockValue.mutex) }

    /// Waits (the lock held) at most `seconds`; false when the time ran out.
    @discardableResult
    public func wait(seconds: Double) -> Bool {
        guard seconds > 0 else { return false }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let whole = Int(seconds)
        var nanos = now.tv_nsec + Int((seconds - Double(whole)) * 1e9)
        var secs = now.tv_sec + whole
        if nanos >= 1_000_000_000 { secs += 1; nanos -= 1_000_000_000 }
        var deadline = timespec(tv_sec: secs, tv_nsec: nanos)
        return pthread_cond_timedwait(cond, lockValue.mutex, &deadline) != ETIMEDOUT
    }
}

/// Nanoseconds on CLOCK_MONOTONIC: the one clock of deadlines, timeouts and latencies.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
