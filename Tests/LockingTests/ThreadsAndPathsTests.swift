import Glibc
import Locking
import Testing

@Test func startedThreadsRunTheirBodyWithTheirName() {
    let done = Condition()
    let seen = LockedValue<[String]>([])
    for i in 0..<4 {
        #expect(startThread(name: "kekd-test-\(i)-with-a-long-name") {
            var name = [CChar](repeating: 0, count: 32)
            _ = prctlName(&name)
            let length = name.firstIndex(of: 0) ?? name.count
            seen.withLock { $0.append(String(decoding: name[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
            done.lock(); done.signal(); done.unlock()
        })
    }
    done.lock()
    while seen.withLock({ $0.count }) < 4 { done.wait(seconds: 5) }
    done.unlock()
    let names = seen.withLock { $0 }.sorted()
    #expect(names == (0..<4).map { String("kekd-test-\($0)-with-a-long-name".prefix(15)) }.sorted())
}

// The thread's own name as the kernel knows it (pthread_getname_np, declared by glibc only under _GNU_SOURCE).
@_silgen_name("pthread_getname_np")
private func getThreadName(_ thread: pthread_t, _ name: UnsafeMutablePointer<CChar>, _ length: Int) -> Int32
private func prctlName(_ buffer: inout [CChar]) -> Int32 {
    let count = buffer.count
    return buffer.withUnsafeMutableBufferPointer { getThreadName(pthread_self(), $0.baseAddress!, count) }
}

@Test func conditionWaitTimesOutOnTheMonotonicClockAndWakesOnSignal() {
    let condition = Condition()
    condition.lock()
    var start = timespec(), end = timespec()
    clock_gettime(CLOCK_MONOTONIC, &start)
    #expect(condition.wait(seconds: 0.05) == false)
    clock_gettime(CLOCK_MONOTONIC, &end)
    condition.unlock()
    let elapsed = Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
    #expect(elapsed >= 0.05)
    #expect(condition.wait(seconds: 0) == false)

    let flag = LockedValue(false)
    startThread(name: "signaller") {
        sleep(seconds: 0.02)
        condition.lock(); flag.withLock { $0 = true }; condition.signal(); condition.unlock()
    }
    condition.lock()
    while !flag.withLock({ $0 }) { _ = condition.wait(seconds: 10) }
    condition.unlock()
    #expect(flag.withLock { $0 })
}

@Test func pathArithmeticMatchesNSStringForTheCasesKekdUses() {
    #expect(parentFolder(of: "/etc/kekd/kek.json") == "/etc/kekd")
    #expect(parentFolder(of: "kek.json") == ".")
    #expect(parentFolder(of: "/kek.json") == "/")
    #expect(parentFolder(of: "state//kek.json") == "state")
    #expect(parentFolder(of: "state/sub/") == "state")
    #expect(parentFolder(of: "/") == "/")
    #expect(lastPathComponent(of: "/etc/kekd/kek.json") == "kek.json")
    #expect(lastPathComponent(of: "kek.json") == "kek.json")
    #expect(lastPathComponent(of: "/var/lib/kekd/") == "kekd")
    #expect(lastPathComponent(of: "/") == "/")
}
