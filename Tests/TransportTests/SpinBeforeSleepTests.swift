// The spin-before-sleep window: how it adapts (pure), and that a spinning wait still returns what poll(2) says.
import Glibc
import Testing
@testable import Transport

@Test func windowGrowsWhileWaitsAreShortAndShrinksToNothingWhenTheyAreLong() {
    var spin = SpinBeforeSleep(limitNanos: 50_000)
    #expect(spin.windowNanos == 0)  // a connection's first wait never spins
    var windows: [UInt64] = []
    for waited: UInt64 in [5_000, 15_000, 30_000, 50_000, 1_000] {
        spin.slept(waitedNanos: waited)
        windows.append(spin.windowNanos)
    }
    #expect(windows == [10_000, 20_000, 40_000, 50_000, 50_000])  // starts at a fifth, doubles, capped by the limit
    windows = []
    for waited: UInt64 in [50_001, 60_000_000, 1_000_000, 70_000] {
        spin.slept(waitedNanos: waited)
        windows.append(spin.windowNanos)
    }
    #expect(windows == [25_000, 12_500, 0, 0])  // halves; below the first window it stops spinning at all
}

@Test func aZeroLimitNeverSpins() {
    var spin = SpinBeforeSleep(limitNanos: 0)
    for _ in 0..<4 { spin.slept(waitedNanos: 0) }
    #expect(spin.windowNanos == 0)
}

@Test func pollThroughTheSpinReportsReadinessAndAdapts() throws {
    var pair: [Int32] = [0, 0]
    #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
    defer { close(pair[0]); close(pair[1]) }
    var fds = [pollfd(fd: pair[1], events: Int16(POLLIN), revents: 0)]
    // A limit of 10 ms keeps the test's timing far from the scheduler's noise.
    var spin = SpinBeforeSleep(limitNanos: 10_000_000)

    // Nothing to read: waits of a zero timeout last about as long as their spin, within the limit, so the window
    // grows to it: 2, 4, 8, 10 ms.
    for _ in 0..<4 { #expect(spin.poll(&fds, timeoutMillis: 0) == 0) }
    #expect(spin.windowNanos == 10_000_000)

    // Data already there: the spin's first poll sees it; a wait that sleeps not at all leaves the window alone.
    var byte: UInt8 = 7
    #expect(write(pair[0], &byte, 1) == 1)
    fds[0].revents = 0
    #expect(spin.poll(&fds, timeoutMillis: 1_000) == 1)
    #expect(fds[0].revents & Int16(POLLIN) != 0)
    #expect(spin.windowNanos == 10_000_000)
    #expect(read(pair[1], &byte, 1) == 1 && byte == 7)

    // Waits that sleep 20 ms beyond their spin, past the limit, halve the window to 5 and 2.5 ms, then to nothing.
    for _ in 0..<3 {
        fds[0].revents = 0
        #expect(spin.poll(&fds, timeoutMillis: 20) == 0)
    }
    #expect(spin.windowNanos == 0)
}
