import Foundation
import Locking
import Testing

@Test func concurrentIncrementsAreNotLost() {
    let counter = LockedValue(0)
    let threads = 8, increments = 20_000
    DispatchQueue.concurrentPerform(iterations: threads) { _ in
        for _ in 0..<increments { counter.withLock { $0 += 1 } }
    }
    #expect(counter.withLock { $0 } == threads * increments)
}

@Test func typedErrorsAndResultsPassThrough() {
    struct Refused: Error, Equatable {}
    let names = LockedValue<[String]>([])
    #expect(throws: Refused()) {
        try names.withLock { (list: inout [String]) throws(Refused) in
            list.append("kept")
            throw Refused()
        }
    }
    let count = names.withLock { list -> Int in
        list.append("second")
        return list.count
    }
    #expect(count == 2)
    #expect(names.withLock { $0 } == ["kept", "second"])
}
