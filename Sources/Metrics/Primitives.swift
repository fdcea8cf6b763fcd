// Lock-free counters and histograms, and a bounded map from label values to them.
import Synchronization

/// A monotonically increasing counter. A class so it can live in arrays and dictionaries (an `Atomic` itself
/// is non-copyable); allocated once per series, never per observation.
final class Counter: Sendable {
    private let count = Atomic<UInt64>(0)

    func add(_ n: UInt64 = 1) { count.wrappingAdd(n, ordering: .relaxed) }
    var value: UInt64 { count.load(ordering: .relaxed) }
}

/// Bucket layout of a histogram: strictly increasing finite upper bounds; +Inf is implicit.
struct HistogramBuckets: Sendable {
    let upperBounds: [Double]

    /// 10 µs .. 5 s: local AES-GCM calls land in the first buckets, Vault round trips in the middle,
    /// and the apiserver's 3 s KMS timeout has a bucket edge of its own.
    static let latency = HistogramBuckets(upperBounds: [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
        0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5,
    ])
}

/// A histogram of durations in seconds. Buckets are stored non-cumulatively (one atomic add per observation)
/// and made cumulative at render time, so `_count` always equals the `+Inf` bucket. The sum is kept in
/// integer nanoseconds: exact, and an atomic integer add instead of a compare-and-swap loop on a Double.
final class Histogram: Sendable {
    let buckets: HistogramBuckets
    private let counts: [Counter]          // upperBounds.count + 1 (the last is the +Inf overflow)
    private let sumNanos = Atomic<UInt64>(0)

    init(_ buckets: HistogramBuckets) {
        self.buckets = buckets
        counts = (0...buckets.upperBounds.count).map { _ in Counter() }
    }

    func observe(seconds: Double) {
        // NaN and negative durations (a clock step) count as zero rather than corrupting the sum.
        let s = seconds.isNaN || seconds < 0 ? 0 : seconds
        let bounds = buckets.upperBounds
        var index = bounds.count
        for i in bounds.indices where s <= bounds[i] {
            index = i
            break
        }
        counts[index].add()
        let nanos = s >= 1.8e10 ? UInt64(1.8e19) : UInt64(s * 1e9)   // clamp: no conversion trap on huge values
        sumNanos.wrappingAdd(nanos, ordering: .relaxed)
    }

    struct Snapshot: Sendable {
        var cumulative: [UInt64]   // one per upper bound, then +Inf
        var sumSeconds: Double
        var count: UInt64 { cumulative.last ?? 0 }
    }

    func snapshot() -> Snapshot {
        var running: UInt64 = 0
        var cumulative: [UInt64] = []
        cumulative.reserveCapacity(counts.count)
        for c in counts {
            running &+= c.value
            cumulative.append(running)
        }
        return Snapshot(cumulative: cumulative, sumSeconds: Double(sumNanos.load(ordering: .relaxed)) / 1e9)
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

/// Series keyed by caller-supplied label values, with bounded cardinality: after `capacity` distinct keys,
/// new keys share one `overflow` series, so a caller passing unexpected strings cannot grow memory or the
/// scrape without bound. Values are truncated to `maxValueLength` characters for the same reason.
final class BoundedSeries<Series: AnyObject & Sendable>: Sendable {
    private let table = Mutex<[LabelKey: Series]>([:])
    private let capacity: Int
    private let overflow: LabelKey
    private let make: @Sendable () -> Series
    static var maxValueLength: Int { 64 }

    init(capacity: Int, overflow: LabelKey, make: @escaping @Sendable () -> Series) {
        self.capacity = capacity
        self.overflow = overflow
        self.make = make
    }

    func series(_ first: String, _ second: String = "") -> Series {
        let key = LabelKey(first: Self.bounded(first), second: Self.bounded(second))
        return table.withLock { table in
            if let existing = table[key] { return existing }
            let target = table.count < capacity ? key : overflow
            if let existing = table[target] { return existing }
            let created = make()
            table[target] = created
            return created
        }
    }

    /// All series, sorted by label values so the exposition is stable between scrapes.
    func all() -> [(key: LabelKey, series: Series)] {
        table.withLock { table in table.map { (key: $0.key, series: $0.value) } }.sorted { $0.key < $1.key }
    }

    private static func bounded(_ value: String) -> String {
        value.utf8.count <= maxValueLength ? value : String(value.prefix(maxValueLength))
    }
}
