// RFC 3339 times for audit records, log lines and the usage file: written byte by byte (the audit chain MACs exact
// bytes), parsed leniently.
import FoundationEssentials

/// RFC 3339 in UTC with nine fractional digits ("2026-11-25T13:35:18.123456789Z"), and a lenient parser for
/// any RFC 3339 timestamp (fraction optional, Z or ±HH:MM).
public enum RFC3339 {
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range four year digits can express.
    @usableFromInline static let minSeconds: Int64 = -62_135_596_800
    @usableFromInline static let maxSeconds: Int64 = 253_402_300_799

    public static func format(_ date: Date) -> String {
        var out = [UInt8]()
        append(date, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the time without quotes (log lines call this once per line).
    @inlinable
    public static func append(_ date: Date, to out: inout [UInt8]) {
        let (seconds, nanos) = split(date)
        appendSecond(seconds, to: &out)
        appendFraction(nanos, to: &out)
    }

    /// The formatted second of the last time appended: a writer's consecutive times (the audit log's records) share
    /// it, so the calendar arithmetic runs once a second and every other time costs one copy and nine digits.
    public struct SecondCache: Sendable {
        @usableFromInline var second = Int64.min
        /// "YYYY-MM-DDTHH:MM:SS." of `second`.
        @usableFromInline var prefix: [UInt8] = []

        public init() {}

        /// The same bytes as `RFC3339.append`.
        @inlinable
        public mutating func append(_ date: Date, to out: inout [UInt8]) {
            let (seconds, nanos) = RFC3339.split(date)
            if seconds != second {
                prefix.removeAll(keepingCapacity: true)
                RFC3339.appendSecond(seconds, to: &prefix)
                second = seconds
            }
            out.append(contentsOf: prefix)
            RFC3339.appendFraction(nanos, to: &out)
        }
    }

    /// Whole seconds since the epoch (clamped to the four-digit years) and nanoseconds.
    @inlinable
    static func split(_ date: Date) -> (seconds: Int64, nanos: Int64) {
        let t = date.timeIntervalSince1970
        guard t.isFinite else { return (0, 0) }
        let clamped = min(max(t, Double(minSeconds)), Double(maxSeconds))
        let whole = clamped.rounded(.down)
        return (Int64(whole), min(Int64(((clamped - whole) * 1e9).rounded()), 999_999_999))
    }

    /// "YYYY-MM-DDTHH:MM:SS."
    @inlinable
    static func appendSecond(_ seconds: Int64, to out: inout [UInt8]) {
        let days = floorDiv(seconds, 86400)
        let secondOfDay = seconds - days * 86400
        let (year, month, day) = civilFromDays(days)
        appendPadded(year, 4, &out); out.append(0x2D)
        appendPadded(month, 2, &out); out.append(0x2D)
        appendPadded(day, 2, &out); out.append(0x54)
        appendPadded(secondOfDay / 3600, 2, &out); out.append(0x3A)
        appendPadded(secondOfDay / 60 % 60, 2, &out); out.append(0x3A)
        appendPadded(secondOfDay % 60, 2, &out); out.append(0x2E)
    }

    /// Nine fractional digits and "Z".
    @inlinable
    static func appendFraction(_ nanos: Int64, to out: inout [UInt8]) {
        JSONWriter.appendDecimal(UInt64(truncatingIfNeeded: nanos), minimumDigits: 9, to: &out)
        out.append(0x5A)
    }

    public static func parse(_ text: String) -> Date? {
        let b = Array(text.utf8)
        var i = 0
        func number(_ digits: Int) -> Int64? {
            guard i + digits <= b.count else { return nil }
            var v: Int64 = 0
            for k in i..<(i + digits) {
                guard b[k] >= 0x30, b[k] <= 0x39 else { return nil }
                v = v * 10 + Int64(b[k] - 0x30)
            }
            i += digits
            return v
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < b.count, b[i] == c || (c == 0x54 && b[i] == 0x74) || (c == 0x54 && b[i] == 0x20) else { return false }
            i += 1
            return true
        }
        guard let year = number(4), expect(0x2D), let month = number(2), expect(0x2D), let day = number(2),
              expect(0x54), let hour = number(2), expect(0x3A), let minute = number(2), expect(0x3A),
              let second = number(2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second <= 60
        else { return nil }
        var fraction = 0.0
        if i < b.count, b[i] == 0x2E {
            i += 1
            var scale = 0.1
            let start = i
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 {
                fraction += Double(b[i] - 0x30) * scale
                scale /= 10
                i += 1
            }
            guard i > start else { return nil }
        }
        var offset: Int64 = 0
        guard i < b.count else { return nil }
        if b[i] == 0x5A || b[i] == 0x7A {
            i += 1
        } else if b[i] == 0x2B || b[i] == 0x2D {
            let sign: Int64 = b[i] == 0x2D ? -1 : 1
            i += 1
            guard let oh = number(2), expect(0x3A), let om = number(2), oh < 24, om < 60 else { return nil }
            offset = sign * (oh * 3600 + om * 60)
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        let days = daysFromCivil(year, month, day)
        let seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }

    @inlinable static func appendPadded(_ v: Int64, _ width: Int, _ out: inout [UInt8]) {
        if v < 0 { out.append(0x2D) }
        JSONWriter.appendDecimal(v.magnitude, minimumDigits: v < 0 ? width - 1 : width, to: &out)
    }

    @inlinable static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

    // Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
    @inlinable static func civilFromDays(_ z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = floorDiv(z, 146_097)
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    private static func daysFromCivil(_ y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = floorDiv(y, 400)
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
