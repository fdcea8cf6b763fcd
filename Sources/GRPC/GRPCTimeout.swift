// The grpc-timeout header: at most 8 ASCII digits and one unit (H M S m u n).

public enum GRPCTimeout {
    /// Nanoseconds, or nil when the value is malformed. Saturates instead of overflowing.
    public static func parse(_ value: String) -> UInt64? {
        var value = value  // read in place (parsed on every call that carries a deadline); no copy for a native string
        return value.withUTF8(parse)
    }

    private static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64? {
        guard bytes.count >= 2, bytes.count <= 9 else { return nil }
        let unit = bytes[bytes.count - 1]
        var amount: UInt64 = 0
        for d in bytes[..<(bytes.count - 1)] {
            guard d >= UInt8(ascii: "0"), d <= UInt8(ascii: "9") else { return nil }
            amount = amount * 10 + UInt64(d - UInt8(ascii: "0"))
        }
        let nanosPerUnit: UInt64
        switch unit {
        case UInt8(ascii: "H"): nanosPerUnit = 3_600_000_000_000
        case UInt8(ascii: "M"): nanosPerUnit = 60_000_000_000
        case UInt8(ascii: "S"): nanosPerUnit = 1_000_000_000
        case UInt8(ascii: "m"): nanosPerUnit = 1_000_000
        case UInt8(ascii: "u"): nanosPerUnit = 1_000
        case UInt8(ascii: "n"): nanosPerUnit = 1
        default: return nil
        }
        let (product, overflow) = amount.multipliedReportingOverflow(by: nanosPerUnit)
        return overflow ? UInt64.max : product
    }

    /// The finest unit whose value fits in 8 digits, rounding up (as grpc-go does).
    public static func encode(nanoseconds: UInt64) -> String {
        let units: [(UInt64, String)] = [(1, "n"), (1_000, "u"), (1_000_000, "m"), (1_000_000_000, "S"),
                                         (60_000_000_000, "M"), (3_600_000_000_000, "H")]
        for (size, unit) in units {
            let value = nanoseconds / size + (nanoseconds % size == 0 ? 0 : 1)
            if value <= 99_999_999 { return "\(value)\(unit)" }
        }
        return "99999999H"
    }
}
