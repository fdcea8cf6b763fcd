// Helpers shared by the HPACK tests.
import HPACK

func bytes(hex: String) -> [UInt8] {
    let digits = Array(hex.utf8).filter { $0 != UInt8(ascii: " ") }
    precondition(digits.count % 2 == 0, "odd hex literal in a test")
    func nibble(_ c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: preconditionFailure("bad hex digit in a test")
        }
    }
    return stride(from: 0, to: digits.count, by: 2).map { nibble(digits[$0]) << 4 | nibble(digits[$0 + 1]) }
}

func hex(_ data: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for byte in data {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}

func fields(_ pairs: [(String, String)]) -> [HeaderField] {
    pairs.map { HeaderField(name: $0.0, value: $0.1) }
}

/// Decodes a block and returns the fields or the error, for #expect comparisons.
func decodeResult(_ decoder: inout HPACKDecoder, _ block: [UInt8]) -> Result<[HeaderField], HPACKError> {
    do {
        return .success(try decoder.decode(block[...]))
    } catch {
        return .failure(error)
    }
}

/// SplitMix64: a seedable generator so random tests are reproducible.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random header lists shaped like real traffic: repeated names and values, static-table names, pseudo-headers,
/// empty, long and non-ASCII values, and printable ASCII including quotes and backslashes.
struct HeaderListGenerator {
    var rng: SeededGenerator
    private let names = [":path", ":authority", "content-type", "user-agent", "te", "grpc-timeout", "x-custom",
                         "cache-control", "set-cookie", "date", "x-a", "grpc-message", "authorization", "accept"]
    private let values = ["application/grpc", "trailers", "/v2.KeyManagementService/Status", "localhost",
                          "grpc-go/1.65.0", "gzip", "", "no-cache", "private"]
    private var recent: [HeaderField] = []

    init(seed: UInt64) { rng = SeededGenerator(seed: seed) }

    mutating func token(maxLength: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        let length = Int.random(in: 1...maxLength, using: &rng)
        return String(decoding: (0..<length).map { _ in alphabet.randomElement(using: &rng)! }, as: UTF8.self)
    }

    mutating func value() -> String {
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: return values.randomElement(using: &rng)!
        case 1: return ""
        case 2:  // long: larger than small tables, exercises eviction and "too big to index"
            return String(repeating: token(maxLength: 8), count: Int.random(in: 10...40, using: &rng))
        case 3:  // non-ASCII scalars
            let scalars: [Character] = ["é", "ß", "漢", "字", "🙂", "Ω", "\u{7F}", "\t"]
            return String((0..<Int.random(in: 1...12, using: &rng)).map { _ in scalars.randomElement(using: &rng)! })
        case 4:
            return "\(Int.random(in: 0...99_999_999, using: &rng))u"
        default:  // printable ASCII, all specials included
            let length = Int.random(in: 0...40, using: &rng)
            let chars = (0..<length).map { _ in UInt8.random(in: 0x20...0x7E, using: &rng) }
            return String(decoding: chars, as: UTF8.self)
        }
    }

    mutating func field() -> HeaderField {
        if !recent.isEmpty && Int.random(in: 0..<3, using: &rng) == 0 {
            return recent.randomElement(using: &rng)!
        }
        let name = Int.random(in: 0..<2, using: &rng) == 0 ? names.randomElement(using: &rng)! : token(maxLength: 20)
        let field = HeaderField(name: name, value: value())
        recent.append(field)
        if recent.count > 30 { recent.removeFirst() }
        return field
    }

    mutating func list() -> [HeaderField] {
        (0..<Int.random(in: 0...12, using: &rng)).map { _ in field() }
    }

    /// `previous` with one change (a field replaced, added or dropped), the way a client's next request repeats
    /// its header list: exercises the encoder's memory of the last block.
    mutating func next(after previous: [HeaderField]) -> [HeaderField] {
        var list = previous
        switch Int.random(in: 0..<4, using: &rng) {
        case 0 where !list.isEmpty: list[Int.random(in: 0..<list.count, using: &rng)] = field()
        case 1: list.insert(field(), at: Int.random(in: 0...list.count, using: &rng))
        case 2 where !list.isEmpty: list.remove(at: Int.random(in: 0..<list.count, using: &rng))
        default: break  // the same list again
        }
        return list
    }

    mutating func tableSize() -> Int {
        [0, 1, 32, 64, 100, 256, 1000, 2048, 4096].randomElement(using: &rng)!
    }
}
