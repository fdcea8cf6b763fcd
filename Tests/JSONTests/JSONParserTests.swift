import JSON
import Testing

// Inputs RFC 8259 accepts and rejects, chosen where hand-written parsers usually go wrong (as in the JSONTestSuite
// corpus): each must parse, or be refused, exactly as the RFC says.
@Test(arguments: [
    ("[]", JSONValue.array([])), ("{}", .object([:])), (" \t\r\n 1 \n", .number(1)), ("-0", .number(-0.0)),
    ("1.5e3", .number(1500)), ("1E-2", .number(0.01)), ("0.25", .number(0.25)), ("-12", .number(-12)),
    (#""\u00e9\ud83d\ude00\/\b\f\n\r\t""#, .string("é😀/\u{8}\u{c}\n\r\t")), (#""é""#, .string("é")),
    (#"{"a":1,"a":2}"#, .object(["a": .number(2)])), ("[null,true,false]", .array([.null, .bool(true), .bool(false)])),
    (#"{"k":[{"x":"y"}]}"#, .object(["k": .array([.object(["x": .string("y")])])])),
])
func acceptsWhatTheRFCAccepts(text: String, expected: JSONValue) {
    #expect(JSONValue.parse(Array(text.utf8)) == expected)
}

@Test(arguments: [
    "", " ", "[", "]", "{", "[1,]", "[,1]", #"{"a":1,}"#, #"{"a" 1}"#, #"{a:1}"#, "01", "-", "1.", ".5", "1e", "1e+",
    "+1", "0x10", "NaN", "Infinity", "tru", "nul", "[1 2]", "'a'", #""a"#, #""\x""#, #""\u12""#, #""\ud800""#,
    #""\udc00""#, #""\ud800\u0041""#, "\"a\u{1}b\"", "\"tab\there\"", "1 2", "[1]x", #"{"a":1}}"#,
])
func refusesWhatTheRFCRefuses(text: String) {
    #expect(JSONValue.parse(Array(text.utf8)) == nil, "accepted \(text)")
}

@Test func refusesInvalidUTF8AndExcessiveNesting() {
    #expect(JSONValue.parse([0x22, 0xC3, 0x28, 0x22]) == nil)   // a broken two-byte sequence inside a string
    #expect(JSONValue.parse([0x22, 0xFF, 0x22]) == nil)
    let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
    #expect(JSONValue.parse(Array(deep.utf8)) == nil)
    let fine = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
    #expect(JSONValue.parse(Array(fine.utf8)) != nil)
    let hostile = String(repeating: "[", count: 100_000)   // no stack overflow, just a refusal
    #expect(JSONValue.parse(Array(hostile.utf8)) == nil)
}

@Test func writerOutputParsesBackToTheSameValue() {
    var rng = SystemRandomNumberGenerator()
    func random(_ depth: Int) -> JSONValue {
        switch Int.random(in: 0..<(depth > 3 ? 4 : 6), using: &rng) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &rng))
        case 2: return .number(Bool.random(using: &rng) ? Double(Int.random(in: -1_000_000...1_000_000, using: &rng))
                                                         : Double.random(in: -1e6...1e6, using: &rng))
        case 3:
            let scalars = (0..<Int.random(in: 0...8, using: &rng)).map { _ in
                Unicode.Scalar([0x22, 0x5C, 0x0A, 0x01, 0x41, 0xE9, 0x1F600, 0x7F].randomElement(using: &rng)!)!
            }
            return .string(String(String.UnicodeScalarView(scalars)))
        case 4: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in random(depth + 1) })
        default:
            return .object(Dictionary((0..<Int.random(in: 0...4, using: &rng)).map { ("k\($0)\u{e9}\"", random(depth + 1)) },
                                      uniquingKeysWith: { a, _ in a }))
        }
    }
    for _ in 0..<2000 {
        let value = random(0)
        #expect(JSONValue.parse(value.serialized()) == value)
    }
}
