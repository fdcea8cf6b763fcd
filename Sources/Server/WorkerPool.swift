// Threads for calls that may block (a remote key backend, a fail-closed audit log). GCD's global queues add
// threads slowly when their workers block, which would let one slow call delay others; this pool starts a
// thread whenever no worker is idle, up to its limit, and lets idle ones exit.
import FoundationEssentials
import Locking
import Glibc

final class WorkerPool: @unchecked Sendable {
    private let condition = Condition()
    private var jobs: [@Sendable () -> Void] = []
    private var idle = 0
    private var threads = 0
    private let maxThreads: Int
    private let idleSeconds: Double

    init(maxThreads: Int, idleSeconds: Double = 30) {
        self.maxThreads = max(1, maxThreads)
        self.idleSeconds = idleSeconds
    }

    /// Queues a job. The caller bounds the number of outstanding jobs, so the queue cannot grow without limit.
    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        if idle == 0 && threads < maxThreads {
            threads += 1
            startThread(name: "kekd-worker") { [self] in work() }
        } else {
            condition.signal()
        }
        condition.unlock()
    }

    private func work() {
        condition.lock()
        while true {
            while jobs.isEmpty {
                idle += 1
                let woke = condition.wait(seconds: idleSeconds)
                idle -= 1
                if !woke && jobs.isEmpty {
                    threads -= 1
                    condition.unlock()
                    return
                }
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
            condition.lock()
        }
    }
}
