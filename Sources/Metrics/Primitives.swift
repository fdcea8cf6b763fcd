// Fixed-size blocks of atomic counters and histograms, and a bounded map from label values to slots.
// Storage is inline (InlineArray of Atomic), allocated once: an observation is a few relaxed atomic adds with no
// allocation and no reference counting on shared objects (which would bounce cache lines between threads).
import Locking
import Synchronization

/// Counters addressed by slot number.
final class CounterBlock: Sendable {
    static let capacity = 72
    private let values: InlineArray<72, Atomic<UInt64>>

    init() { values = InlineArray { _ in Atomic(0) } }

    func add(_ slot: Int, _ n: UInt64 = 1) { values[slot].wrappingAdd(n, ordering: .relaxed) }
    func value(_ slot: Int) -> UInt64 { values[slot].load(ordering: .relaxed) }
}

/// Latency histograms addressed by series number, all with the same buckets: 10 µs .. 5 s, so local AES-GCM calls
/// land in the first buckets, Vault round trips in the middle, and the apiserver's 3 s KMS timeout has an edge.
/// Buckets are stored non-cumulatively (one atomic add per observation) and summed at render time, so `_count`
/// always equals the `+Inf` bucket. The sum is kept in integer nanoseconds: exact, and one atomic add.
final class HistogramBlock: Sendable {
    static let slotsPerSeries = 20          // upperBounds.count + the +Inf overflow
    static let capacity = 16                // series
    private static let bounds: InlineArray<19, Double> = [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
        0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5,
    ]
    static var upperBounds: [Double] { bounds.indices.map { bounds[$0] } }
    private let counts: InlineArray<320, Atomic<UInt64>>   // capacity * slotsPerSeries
    private let sumNanos: InlineArray<16, Atomic<UInt64>>

    init() {
        counts = InlineArray { _ in Atomic(0) }
        sumNanos = InlineArray { _ in Atomic(0) }
    }

    func observe(series: Int, seconds: Double) {
        // NaN and negative durations (a clock step) count as zero rather than corrupting the sum.
        let s = seconds.isNaN || seconds < 0 ? 0 : seconds
        var bucket = Self.bounds.count
        for i in Self.bounds.indices where s <= Self.bounds[i] {
            bucket = i
            break
        }
        counts[series * Self.slotsPerSeries + bucket].wrappingAdd(1, ordering: .relaxed)
        let nanos = s >= 1.8e10 ? UInt64(1.8e19) : UInt64(s * 1e9)   // clamp: no conversion trap on huge values
        sumNanos[series].wrappingAdd(nanos, ordering: .relaxed)
    }

    struct Snapshot: Sendable {
        var cumulative: [UInt64]   // one per upper bound, then +Inf
        var sumSeconds: Double
        var count: UInt64 { cumulative.last ?? 0 }
    }

    func snapshot(series: Int) -> Snapshot {
        var running: UInt64 = 0
        var cumulative: [UInt64] = []
        cumulative.reserveCapacity(Self.slotsPerSeries)
        for slot in 0..<Self.slotsPerSeries {
            running &+= counts[series * Self.slotsPerSeries + slot].load(ordering: .relaxed)
            cumulative.append(running)
        }
        return Snapshot(cumulative: cumulative,
                        sumSeconds: Double(sumNanos[series].load(ordering: .relaxed)) / 1e9)
    }
}

/// Label values for a series with up to two labels.
struct LabelKey: Hashable, Sendable, Comparable {
    var first: String
    var second: String

    static func < (a: LabelKey, b: LabelKey) -> Bool {
        (a.first, a.second) < (b.first, b.second)
    }
}

/// Assigns slots to caller-supplied label values, with bounded cardinality: after `capacity` distinct keys, new
/// keys share one `overflow` slot, so a caller passing unexpected strings cannot grow memory or the scrape.
/// Values are cut to `maxValueLength` characters for the same reason. The lookup is a short linear scan of small
/// strings under a lock: cheaper than hashing for the handful of keys a backend uses.
final class LabelSlots: Sendable {
    static let maxValueLength = 64
    private let keys = LockedValue<[LabelKey]>([])
    private let capacity: Int
    private let overflow: LabelKey

    /// `capacity` + 1 (the overflow slot) must fit the block the slots index.
    init(capacity: Int, overflow: LabelKey) {
        self.capacity = capacity
        self.overflow = overflow
    }

    func slot(_ first: String, _ second: String = "") -> Int {
        let found = keys.withLock { keys -> Int? in
            for i in keys.indices where keys[i].first == first && keys[i].second == second { return i }
            return nil
        }
        if let found { return found }
        let key = LabelKey(first: Self.bounded(first), second: Self.bounded(second))
        return keys.withLock { keys in
            if let i = keys.firstIndex(of: key) { return i }    // a cut value, or another thread was first
            let target = keys.count < capacity ? key : overflow
            if let i = keys.firstIndex(of: target) { return i }
            keys.append(target)
            return keys.count - 1
        }
    }

    /// Every key with its slot, sorted by label values so the exposition is stable between scrapes.
    func all() -> [(key: LabelKey, slot: Int)] {
        keys.withLock { keys in keys.enumerated().map { (key: $0.element, slot: $0.offset) } }
            .sorted { $0.key < $1.key }
    }

    private static func bounded(_ value: String) -> String {
        value.utf8.count <= maxValueLength ? value : String(value.prefix(maxValueLength))
    }
}
