import Locking
import Testing
@testable import Vault

@Suite struct ResilienceTests {
    @Test func backoffGrowsExponentiallyUpToTheCapWithJitter() {
        let b = Backoff(base: 0.05, cap: 0.3, maxAttempts: 5)
        #expect(b.ceiling(retry: 1) == 0.05)
        #expect(b.ceiling(retry: 2) == 0.1)
        #expect(b.ceiling(retry: 3) == 0.2)
        #expect(b.ceiling(retry: 4) == 0.3)
        #expect(b.ceiling(retry: 1000) == 0.3)
        #expect(b.delay(retry: 3, random: 0.5) == 0.1)
        #expect(b.delay(retry: 3, random: 7) == 0.2)
        let samples = (0..<200).map { _ in b.delay(retry: 2) }
        #expect(samples.allSatisfy { $0 >= 0 && $0 <= 0.1 })
        #expect(Set(samples).count > 100)  // jittered, not constant
    }

    @Test func breakerOpensFailsFastThenAdmitsOneTrial() {
        let clock = LockedValue<Double>(100)
        let breaker = CircuitBreaker(failureThreshold: 2, minOpenSeconds: 1, maxOpenSeconds: 4, now: { clock.withLock { $0 } })
        #expect(breaker.allow())
        breaker.recordFailure()
        #expect(breaker.state == .closed)
        breaker.recordFailure()
        #expect(breaker.state == .open(until: 101))
        #expect(!breaker.allow())
        clock.withLock { $0 = 101 }
        #expect(breaker.allow())   // the trial
        #expect(!breaker.allow())  // only one trial at a time
        breaker.recordFailure()    // trial failed: open twice as long
        #expect(breaker.state == .open(until: 103))
        clock.withLock { $0 = 103 }
        #expect(breaker.allow())
        breaker.recordSuccess()
        #expect(breaker.state == .closed)
        #expect(breaker.allow() && breaker.allow())
    }
}

@Suite struct ProblemTrackerTests {
    @Test func eachSourceIsLoggedOnceWhenItStartsAndOnceWhenItEnds() {
        let logs = LogLines()
        let tracker = ProblemTracker(log: logs.sink)
        #expect(tracker.message == nil)
        for _ in 0..<5 { tracker.note(.vault, "timed out") }
        tracker.note(.token, "cannot renew")
        #expect(tracker.message == "timed out; cannot renew")
        tracker.clear(.token)
        tracker.clear(.token)
        #expect(tracker.message == "timed out")
        tracker.clear(.vault)
        #expect(tracker.message == nil)
        #expect(logs.all == ["warn: Vault problem (vault): timed out", "warn: Vault problem (token): cannot renew",
                             "info: Vault token upkeep working again", "info: Vault reachable again"])
    }
}
