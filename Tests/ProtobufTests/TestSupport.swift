// Helpers shared by the protobuf tests: hex, a seeded generator, random message contents.

func hexBytes(_ hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var high: UInt8?
    for character in hex where !character.isWhitespace {
        guard let nibble = character.hexDigitValue.map(UInt8.init) else { continue }
        if let pending = high {
            out.append(pending << 4 | nibble)
            high = nil
        } else {
            high = nibble
        }
    }
    return out
}

func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef")
    var out = ""
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0xF)])
    }
    return out
}

/// SplitMix64: reproducible pseudo-random input from a seed that a failure message can print.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SeededGenerator {
    mutating func bytes() -> [UInt8] {
        let count = [0, 1, 32, Int.random(in: 0..<300, using: &self), Int.random(in: 0..<3000, using: &self)]
            .randomElement(using: &self) ?? 0
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) }
    }

    /// ASCII, 2-, 3- and 4-byte UTF-8 characters; sometimes empty.
    mutating func string() -> String {
        let count = [0, 1, Int.random(in: 0..<40, using: &self)].randomElement(using: &self) ?? 0
        var scalars = String.UnicodeScalarView()
        for _ in 0..<count {
            let range: ClosedRange<UInt32> = [0x20...0x7E, 0x80...0x7FF, 0xE000...0xFFFD, 0x10000...0x10FFFF]
                .randomElement(using: &self) ?? 0x20...0x7E
            if let scalar = Unicode.Scalar(UInt32.random(in: range, using: &self)) { scalars.append(scalar) }
        }
        return String(scalars)
    }

    mutating func annotations() -> [String: [UInt8]] {
        var map: [String: [UInt8]] = [:]
        for _ in 0..<Int.random(in: 0...8, using: &self) { map[string()] = bytes() }
        return map
    }
}
