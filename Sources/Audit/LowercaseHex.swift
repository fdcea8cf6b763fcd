// Lowercase hex text back to bytes: the audit chain fields and the audit HMAC key file (the writer is JSONWriter).

enum LowercaseHex {
    /// Lowercase hex of exactly `count` bytes, or nil. Strict: we only ever write lowercase.
    static func decode(_ text: ArraySlice<UInt8>, count: Int) -> [UInt8]? {
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
