// The one JSON writer and escaper (audit records, log lines, JSONValue) and RFC 3339 times.
import Foundation
import JSON
import Testing

@Suite struct JSONWriterTests {
    private func encoded(_ s: String) -> String {
        var out = [UInt8]()
        JSONWriter.appendString(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    @Test func escapesQuotesBackslashAndNamedControls() {
        #expect(encoded("a\"b\\c") == #""a\"b\\c""#)
        #expect(encoded("\u{8}\u{C}\n\r\t") == #""\b\f\n\r\t""#)
        #expect(encoded("\u{0}\u{1}\u{1F}\u{7F}") == #""\u0000\u0001\u001f\u007f""#)
    }

    @Test func escapesEveryControlCharacterAndNonASCII() throws {
        var all = ""
        for v in 0..<0x20 { all.unicodeScalars.append(Unicode.Scalar(UInt8(v))) }
        all += "\u{7F}\u{80}\u{9F}é中\u{2028}\u{2029}😀\u{10FFFF}\"\\/ plain"
        let text = encoded(all)
        #expect(text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }, "output must be printable ASCII")
        #expect(encoded("é") == #""\u00e9""#)
        #expect(encoded("😀") == #""\ud83d\ude00""#)
        // An independent JSON parser reads back exactly the original string.
        let decoded = try JSONSerialization.jsonObject(with: Data("[\(text)]".utf8), options: []) as? [String]
        #expect(decoded == [all])
    }

    @Test func truncatesLongFields() {
        var out = [UInt8]()
        JSONWriter.appendString(String(repeating: "x", count: 10), maxScalars: 4, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == #""xxxx...""#)
    }

    @Test func integersAndPlainStringsAreWrittenExactly() {
        var out: [UInt8] = []
        for n in [Int64(0), 7, -7, 10, 1234567890, Int64.max, Int64.min] {
            out.removeAll()
            JSONWriter.appendInteger(n, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == String(n))
        }
        out.removeAll()
        JSONWriter.appendInteger(UInt64.max, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == String(UInt64.max))
        // The copied fast path and the escaping path agree with each other and with the cut at maxScalars.
        for (input, expected) in [("kekd-v1-abc", "\"kekd-v1-abc\""), ("a\"b", "\"a\\\"b\""), ("é", "\"\\u00e9\""),
                                  ("abcdef", "\"abc...\"")] {
            out.removeAll()
            JSONWriter.appendString(input, maxScalars: input == "abcdef" ? 3 : 64, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == expected, "\(input)")
        }
    }

    @Test func formatsRFC3339WithNanoseconds() {
        #expect(RFC3339.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000000000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 1_795_613_718.5)) == "2026-11-25T13:35:18.500000000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: -1)) == "1969-12-31T23:59:59.000000000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 951_782_400)) == "2000-02-29T00:00:00.000000000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: .nan)) == "1970-01-01T00:00:00.000000000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 1e15)) == "9999-12-31T23:59:59.000000000Z")
    }

    /// The per-second cache of the audit writer gives the bytes of `append` for every time, across seconds.
    @Test func rfc3339SecondCacheMatchesAppend() {
        var cache = RFC3339.SecondCache()
        for t in [0.0, 0.999_999_999, 1, 1_795_613_718.5, 1_795_613_718.000_001, 1_795_613_719.25, -1, .nan, 1e15, 86399.9] {
            var cached = [UInt8](), plain = [UInt8]()
            cache.append(Date(timeIntervalSince1970: t), to: &cached)
            RFC3339.append(Date(timeIntervalSince1970: t), to: &plain)
            #expect(cached == plain, "\(t)")
        }
    }

    @Test func decimalsAreZeroPaddedAndHexIsLowercase() {
        for (value, digits, expected) in [(UInt64(5), 9, "000000005"), (99, 1, "99"), (100, 2, "100"), (1000, 1, "1000"),
                                          (123_456_789, 9, "123456789"), (10, 4, "0010"), (0, 1, "0")] {
            var out = [UInt8]()
            JSONWriter.appendDecimal(value, minimumDigits: digits, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == expected)
        }
        var out = [UInt8]()
        JSONWriter.appendHexDigits((0...255).map { UInt8($0) }, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == (0...255).map { String(format: "%02x", $0) }.joined())
        out.removeAll()
        JSONWriter.appendHexDigits([], to: &out)
        #expect(out.isEmpty)
    }

    @Test func parsesRFC3339() throws {
        let t = try #require(RFC3339.parse("2026-11-25T13:35:18.123456789Z"))
        #expect(abs(t.timeIntervalSince1970 - 1_795_613_718.123456789) < 1e-6)
        #expect(RFC3339.parse("2026-11-25T14:35:18+01:00")?.timeIntervalSince1970 == 1_795_613_718)
        #expect(RFC3339.parse("2026-11-25T13:35:18Z")?.timeIntervalSince1970 == 1_795_613_718)
        for bad in ["", "2026-11-25", "2026-13-01T00:00:00Z", "2026-11-25T13:35:18", "2026-11-25T13:35:18.Z",
                    "2026-11-25T13:35:18Zjunk", "x026-11-25T13:35:18Z", "2026-11-25T25:00:00Z"] {
            #expect(RFC3339.parse(bad) == nil, "\(bad)")
        }
        let now = Date()
        let round = try #require(RFC3339.parse(RFC3339.format(now)))
        #expect(abs(round.timeIntervalSince(now)) < 1e-6)
    }

    @Test func lineSeparatorsAndInvalidUTF8AreEscaped() {
        // U+2028/U+2029 end a line in JavaScript; they never appear raw.
        #expect(encoded("a\u{2028}b\u{2029}") == #""a\u2028b\u2029""#)
        // A String never holds invalid UTF-8: bytes that are not UTF-8 became U+FFFD when it was made.
        let invalid = String(decoding: [0x61, 0xFF, 0xC3, 0x28, 0xED, 0xA0, 0x80, 0x62] as [UInt8], as: UTF8.self)
        let text = encoded(invalid)
        #expect(text.hasPrefix(#""a\ufffd"#) && text.hasSuffix(#"b""#))
        #expect(text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F })
    }

    @Test func keysAndHex() {
        var out: [UInt8] = [0x7B]
        JSONWriter.appendKey("seq", to: &out, first: true)
        JSONWriter.appendInteger(1, to: &out)
        JSONWriter.appendKey(named: "a\"b", to: &out)
        JSONWriter.appendHex([0x00, 0xAB, 0xFF], to: &out)
        out.append(0x7D)
        #expect(String(decoding: out, as: UTF8.self) == #"{"seq":1,"a\"b":"00abff"}"#)
    }

    @Test func jsonValueSerializesThroughTheSameEscaper() {
        let value: JSONValue = ["k\u{1}": "é\u{2028}\n", "n": 2]
        #expect(String(decoding: value.serialized(), as: UTF8.self) == #"{"k\u0001":"\u00e9\u2028\n","n":2}"#)
        #expect(JSONValue.parse(value.serialized()) == value)
    }
}
