// JSON text appended byte by byte to a caller's buffer: the one writer and string escaper of audit records, log lines
// and `JSONValue.serialized()`. Audit lines are written once per call and MACed as exact bytes, so everything here
// appends into a reused [UInt8] without an intermediate String, and the output never depends on a library's
// choices (escaping, number formatting). @inlinable: the audit writer calls it from another module on its hot path.

public enum JSONWriter {
    @usableFromInline static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends `s` as a JSON string literal. Output is pure ASCII: quote, backslash and every control character
    /// (C0, DEL, C1) are escaped, and every non-ASCII scalar becomes \uXXXX (surrogate pairs above the BMP), so a
    /// line never carries raw bytes a terminal or log shipper could interpret, nor U+2028/U+2029 that end a line in
    /// JavaScript. (A String holds valid UTF-8 only: invalid input bytes were already replaced by U+FFFD when it was
    /// made, and come out as \ufffd.) At most `maxScalars` scalars are kept; a cut string ends in "...".
    @inlinable
    public static func appendString(_ s: String, maxScalars: Int = Int.max, to out: inout [UInt8]) {
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
        appendEscapedString(s, maxScalars: maxScalars, to: &out)
    }

    @usableFromInline
    static func appendEscapedString(_ s: String, maxScalars: Int, to out: inout [UInt8]) {
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
    @inlinable
    public static func appendKey(_ key: StaticString, to out: inout [UInt8], first: Bool = false) {
        if !first { out.append(0x2C) }
        out.append(0x22)
        key.withUTF8Buffer { out.append(contentsOf: $0) }
        out.append(0x22)
        out.append(0x3A)
    }

    /// The same for a key chosen at run time (log fields), escaped like any string.
    @inlinable
    public static func appendKey(named key: String, to out: inout [UInt8], first: Bool = false) {
        if !first { out.append(0x2C) }
        appendString(key, to: &out)
        out.append(0x3A)
    }

    @inlinable
    public static func appendInteger(_ n: some BinaryInteger, to out: inout [UInt8]) {
        if n < 0 { out.append(0x2D) }
        appendDecimal(UInt64(truncatingIfNeeded: n.magnitude), minimumDigits: 1, to: &out)
    }

    /// Decimal digits written in place, zero-padded to `minimumDigits`; two digits per division (a table of pairs).
    @inlinable
    public static func appendDecimal(_ value: UInt64, minimumDigits: Int, to out: inout [UInt8]) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { digits in
            var i = 24
            var v = value
            decimalPairs.withUTF8Buffer { pairs in
                while v >= 100 {
                    let pair = Int(truncatingIfNeeded: v % 100) &* 2
                    v /= 100
                    i -= 2
                    digits[i] = pairs[pair]
                    digits[i + 1] = pairs[pair + 1]
                }
                if v >= 10 {
                    let pair = Int(truncatingIfNeeded: v) &* 2
                    i -= 2
                    digits[i] = pairs[pair]
                    digits[i + 1] = pairs[pair + 1]
                } else {
                    i -= 1
                    digits[i] = 0x30 + UInt8(truncatingIfNeeded: v)
                }
            }
            while 24 - i < min(minimumDigits, 24) {
                i -= 1
                digits[i] = 0x30
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: digits[i..<24]))
        }
    }

    /// "00" "01" … "99": the digits of every value below 100.
    @inlinable static var decimalPairs: StaticString {
        """
        00010203040506070809101112131415161718192021222324252627282930313233343536373839\
        40414243444546474849505152535455565758596061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899
        """
    }

    /// JSON text written in the source (a key with its punctuation, `null`), appended as is.
    @inlinable
    public static func appendLiteral(_ text: StaticString, to out: inout [UInt8]) {
        text.withUTF8Buffer { out.append(contentsOf: $0) }
    }

    /// A quoted lowercase hex string.
    @inlinable
    public static func appendHex(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        out.append(0x22)
        appendHexDigits(bytes, to: &out)
        out.append(0x22)
    }

    /// Lowercase hex digits, built on the stack and appended at once.
    @inlinable
    public static func appendHexDigits(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        let count = 2 * bytes.count
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: count) { digits in
            var i = 0
            for b in bytes {
                digits[i] = hexDigit(b >> 4)
                digits[i + 1] = hexDigit(b & 0xF)
                i += 2
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: digits[0..<count]))
        }
    }

    @inlinable @inline(__always)
    static func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 0x30 + nibble : 0x57 + nibble }
}
