import Testing
@testable import HTTP2

/// The budgets on their own, with time driven by the test (no connection, no sleeping).
@Suite struct AbuseBudgetTests {
    static func budgets(_ configure: (inout HTTP2Limits) -> Void) -> AbuseBudgets {
        var limits = HTTP2Limits()
        configure(&limits)
        return AbuseBudgets(limits: limits)
    }

    @Test func rapidResetCountsOnlyYoungUnansweredStreams() {
        var budgets = Self.budgets { $0.maxResetsPerWindow = 2; $0.rapidResetWindow = 10; $0.rapidResetMaxStreamAgeNanos = 100 }
        budgets.now = 1_000
        let old = budgets.peerStreamOpened()
        budgets.now = 1_101   // one past the age limit: a deadline cancellation, not the attack
        #expect(budgets.peerReset(sequence: old, openedAt: 1_000, answered: false) == nil)
        let answered = budgets.peerStreamOpened()
        #expect(budgets.peerReset(sequence: answered, openedAt: 1_101, answered: true) == nil)
        for _ in 0..<2 {
            let young = budgets.peerStreamOpened()
            budgets.now += 100   // exactly at the age limit still counts
            #expect(budgets.peerReset(sequence: young, openedAt: budgets.now - 100, answered: false) == nil)
        }
        let third = budgets.peerStreamOpened()
        #expect(budgets.peerReset(sequence: third, openedAt: budgets.now, answered: false) == .rapidResets)
    }

    @Test func rapidResetsSlideOutOfTheWindow() {
        var budgets = Self.budgets { $0.maxResetsPerWindow = 1; $0.rapidResetWindow = 3 }
        let first = budgets.peerStreamOpened()
        #expect(budgets.peerReset(sequence: first, openedAt: 0, answered: false) == nil)
        for _ in 0..<3 { _ = budgets.peerStreamOpened() }   // the first reset leaves the window
        let next = budgets.peerStreamOpened()
        #expect(budgets.peerReset(sequence: next, openedAt: 0, answered: false) == nil)
        let another = budgets.peerStreamOpened()
        #expect(budgets.peerReset(sequence: another, openedAt: 0, answered: false) == .rapidResets)
    }

    @Test func controlFramesResetWhenTheOutputIsTaken() {
        var budgets = Self.budgets { $0.maxQueuedControlFrames = 3 }
        for _ in 0..<3 { #expect(budgets.controlFrameQueued() == nil) }
        budgets.outputTaken()
        for _ in 0..<3 { #expect(budgets.controlFrameQueued() == nil) }
        #expect(budgets.controlFrameQueued() == .queuedControlFrames)
    }

    @Test func emptyFramesResetOnProgress() {
        var budgets = Self.budgets { $0.maxConsecutiveEmptyFrames = 2 }
        #expect(budgets.emptyFrame() == nil)
        #expect(budgets.emptyFrame() == nil)
        budgets.progress()
        #expect(budgets.emptyFrame() == nil)
        #expect(budgets.emptyFrame() == nil)
        #expect(budgets.emptyFrame() == .emptyFrames)
    }

    @Test func headerBlocksAndQueuedOutputHaveCeilings() {
        let budgets = Self.budgets { $0.maxContinuationFrames = 2; $0.maxHeaderBlockBytes = 100; $0.maxQueuedOutputBytes = 10 }
        #expect(budgets.headerBlock(bytes: 100, continuations: 2) == nil)
        #expect(budgets.headerBlock(bytes: 101, continuations: 0) == .headerBlockBytes)
        #expect(budgets.headerBlock(bytes: 1, continuations: 3) == .continuationFrames)
        #expect(budgets.queuedOutput(bytes: 10) == nil)
        #expect(budgets.queuedOutput(bytes: 11) == .queuedOutputBytes)
    }
}
