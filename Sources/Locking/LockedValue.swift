// A value guarded by a pthread mutex: the lock kekd uses instead of `Synchronization.Mutex`.
//
// Why not Mutex: on Linux it locks with raw futex system calls from the prebuilt, uninstrumented Synchronization
// library, so ThreadSanitizer never sees the lock and reports every access made under it as a data race -- noise
// that buries real races. pthread_mutex_lock/unlock are intercepted by TSan, so accesses under this lock are
// checked like any other. The API is Mutex's (`init(_:)`, `withLock`), so swapping one for the other is a rename.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class LockedValue<Value>: @unchecked Sendable {
    // Heap-allocated so the mutex never moves (a pthread_mutex_t must not be copied or relocated once used).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ initialValue: sending Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        value = initialValue
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value. Not reentrant: calling withLock again from `body` deadlocks.
    public func withLock<Result, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
