// Deterministic JSON text and RFC 3339 times, byte by byte. The chain MACs exact bytes, so nothing here may depend
// on Foundation's encoder choices (key order, escaping, number formatting).
import FoundationEssentials
import Glibc

enum AuditJSON {
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends `s` as a JSON string literal. Output is pure ASCII: quote, backslash and every control character
    /// (C0, DEL) are escaped, and every non-ASCII scalar becomes \uXXXX (surrogate pairs above the BMP), so a line
    /// never carries raw bytes a terminal or log shipper could interpret. At most `maxScalars` scalars are kept;
    /// a cut string ends in "...".
    static func appendString(_ s: String, maxScalars: Int = Int.max, to out: inout [UInt8]) {
        // Printable ASCII that needs no escape (every op, key_id, outcome and most uids) is copied as is.
        let copied = s.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
            guard bytes.count <= maxScalars else { return false }
            for b in bytes where b < 0x20 || b >= 0x7F || b == 0x22 || b == 0x5C { return false }
            out.append(0x22)
            out.append(contentsOf: bytes)
            out.append(0x22)
            return true
        }
        if copied == true { return }
        out.append(0x22)
        var kept = 0
        for scalar in s.unicodeScalars {
            if kept == maxScalars {
                out.append(contentsOf: [0x2E, 0x2E, 0x2E])
                break
            }
            kept += 1
            appendEscaped(scalar.value, to: &out)
        }
        out.append(0x22)
    }

    private static func appendEscaped(_ v: UInt32, to out: inout [UInt8]) {
        switch v {
        case 0x22: out.append(contentsOf: [0x5C, 0x22])          // \"
        case 0x5C: out.append(contentsOf: [0x5C, 0x5C])          // \\
        case 0x08: out.append(contentsOf: [0x5C, 0x62])          // \b
        case 0x0C: out.append(contentsOf: [0x5C, 0x66])          // \f
        case 0x0A: out.append(contentsOf: [0x5C, 0x6E])          // \n
        case 0x0D: out.append(contentsOf: [0x5C, 0x72])          // \r
        case 0x09: out.append(contentsOf: [0x5C, 0x74])          // \t
        case 0x20...0x7E: out.append(UInt8(v))
        case 0..<0x10000: appendUnicodeEscape(UInt16(v), to: &out)   // other C0, DEL, C1, all non-ASCII BMP
        default:
            let u = v - 0x10000
            appendUnicodeEscape(UInt16(0xD800 + (u >> 10)), to: &out)
            appendUnicodeEscape(UInt16(0xDC00 + (u & 0x3FF)), to: &out)
        }
    }

    private static func appendUnicodeEscape(_ unit: UInt16, to out: inout [UInt8]) {
        out.append(0x5C)
        out.append(0x75)
        for shift in stride(from: 12, through: 0, by: -4) { out.append(hexDigits[Int((unit >> UInt16(shift)) & 0xF)]) }
    }

    /// `,"key":` (no comma when `first`). Keys are literals: plain ASCII, no escaping needed.
    static func appendKey(_ key: StaticString, to out: inout [UInt8], first: Bool = false) {
        if !first { out.append(0x2C) }
        out.append(0x22)
        key.withUTF8Buffer { out.append(contentsOf: $0) }
        out.append(0x22)
        out.append(0x3A)
    }

    /// The same for a key chosen at run time (log fields), escaped like any string.
    static func appendKey(named key: String, to out: inout [UInt8], first: Bool = false) {
        if !first { out.append(0x2C) }
        appendString(key, to: &out)
        out.append(0x3A)
    }

    static func appendInteger(_ n: some BinaryInteger, to out: inout [UInt8]) {
        if n < 0 { out.append(0x2D) }
        appendDecimal(UInt64(truncatingIfNeeded: n.magnitude), minimumDigits: 1, to: &out)
    }

    /// Decimal digits written in place: no `String` on the audit path.
    static func appendDecimal(_ value: UInt64, minimumDigits: Int, to out: inout [UInt8]) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { digits in
            var i = 24
            var v = value
            repeat {
                i -= 1
                digits[i] = 0x30 + UInt8(truncatingIfNeeded: v % 10)
                v /= 10
            } while v > 0
            while 24 - i < min(minimumDigits, 24) {
                i -= 1
                digits[i] = 0x30
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: digits[i..<24]))
        }
    }

    /// A quoted lowercase hex string.
    static func appendHex(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        out.append(0x22)
        appendHexDigits(bytes, to: &out)
        out.append(0x22)
    }

    static func appendHexDigits(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        out.reserveCapacity(out.count + 2 * bytes.count)
        for b in bytes {
            out.append(hexDigit(b >> 4))
            out.append(hexDigit(b & 0xF))
        }
    }

    @inline(__always)
    private static func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 0x30 + nibble : 0x57 + nibble }

    /// Lowercase hex of exactly `count` bytes, or nil. Strict: we only ever write lowercase.
    static func decodeHex(_ text: ArraySlice<UInt8>, count: Int) -> [UInt8]? {
        guard text.count == count * 2 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(count)
        var i = text.startIndex
        while i < text.endIndex {
            guard let hi = hexValue(text[i]), let lo = hexValue(text[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
}

/// RFC 3339 in UTC with nine fractional digits ("2026-11-25T13:35:18.123456789Z"), and a lenient parser for
/// any RFC 3339 timestamp (fraction optional, Z or ±HH:MM).
enum RFC3339 {
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range four year digits can express.
    private static let minSeconds: Int64 = -62_135_596_800
    private static let maxSeconds: Int64 = 253_402_300_799

    static func format(_ date: Date) -> String {
        var out = [UInt8]()
        append(date, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    static func append(_ date: Date, to out: inout [UInt8]) {
        let t = date.timeIntervalSince1970
        var seconds: Int64 = 0
        var nanos: Int64 = 0
        if t.isFinite {
            let clamped = min(max(t, Double(minSeconds)), Double(maxSeconds))
            let whole = clamped.rounded(.down)
            seconds = Int64(whole)
            nanos = min(Int64(((clamped - whole) * 1e9).rounded()), 999_999_999)
        }
        let days = floorDiv(seconds, 86400)
        let secondOfDay = seconds - days * 86400
        let (year, month, day) = civilFromDays(days)
        appendPadded(year, 4, &out); out.append(0x2D)
        appendPadded(month, 2, &out); out.append(0x2D)
        appendPadded(day, 2, &out); out.append(0x54)
        appendPadded(secondOfDay / 3600, 2, &out); out.append(0x3A)
        appendPadded(secondOfDay / 60 % 60, 2, &out); out.append(0x3A)
        appendPadded(secondOfDay % 60, 2, &out); out.append(0x2E)
        appendPadded(nanos, 9, &out); out.append(0x5A)
    }

    static func parse(_ text: String) -> Date? {
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

    private static func appendPadded(_ v: Int64, _ width: Int, _ out: inout [UInt8]) {
        if v < 0 { out.append(0x2D) }
        AuditJSON.appendDecimal(v.magnitude, minimumDigits: v < 0 ? width - 1 : width, to: &out)
    }

    private static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

    // Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
    private static func civilFromDays(_ z0: Int64) -> (Int64, Int64, Int64) {
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
