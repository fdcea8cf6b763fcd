// The server-wide cap on request bytes that connections hold while requests are still arriving.
import GRPC
import Locking

final class SharedRequestBufferBudget: RequestBufferBudget {
    let limit: Int
    private let used = LockedValue<Int>(0)

    init(limit: Int) { self.limit = limit }

    func reserve(_ bytes: Int) -> Bool {
        used.withLock { used in
            guard used + bytes <= limit else { return false }
            used += bytes
            return true
        }
    }

    func release(_ bytes: Int) { used.withLock { $0 -= bytes } }
}
