// The one logger: JSON lines, level filter, fields and context, escaping by the shared writer.
import Foundation
import JSON
import Logging
import Locking
import Testing

private final class Lines: Sendable {
    let all = LockedValue<[[UInt8]]>([])
    var output: LogOutput { { line in self.all.withLock { $0.append(line) } } }
    var objects: [[String: JSONValue]] { all.withLock { $0 }.compactMap { JSONValue.parse($0)?.object } }
}

@Suite struct LoggerTests {
    @Test func writesOneJSONObjectPerLineWithTimeLevelAndMessage() throws {
        let lines = Lines()
        let log = Logger(minimumLevel: .info, output: lines.output)
        log.info("kekd started", ["version": "1.0", "connections": 3, "fips": false, "grace_seconds": 2.5])
        let raw = try #require(lines.all.withLock { $0.first })
        #expect(raw.last == 0x0A && raw.dropLast().allSatisfy { $0 != 0x0A }, "exactly one line")
        let text = String(decoding: raw, as: UTF8.self)
        #expect(text.hasPrefix(#"{"time":""#))
        #expect(text.hasSuffix(#","level":"info","msg":"kekd started","version":"1.0","connections":3,"fips":false,"grace_seconds":2.5}"# + "\n"))
        let object = try #require(lines.objects.first)
        let time = try #require(object["time"]?.string.flatMap(RFC3339.parse))
        #expect(abs(time.timeIntervalSinceNow) < 60)
    }

    @Test func stringBackedEnumsAreLoggedByTheirRawValue() {
        enum Kind: String { case enhanceYourCalm = "enhance_your_calm" }
        let lines = Lines()
        Logger(output: lines.output).warn("x", ["kind": Kind.enhanceYourCalm])
        #expect(lines.objects.first?["kind"]?.string == "enhance_your_calm")
    }

    @Test func dropsLinesBelowTheMinimumLevel() {
        let lines = Lines()
        let log = Logger(minimumLevel: .warn, output: lines.output)
        log.debug("d"); log.info("i"); log.warn("w"); log.error("e")
        #expect(lines.objects.map { $0["level"]?.string } == ["warn", "error"])
        #expect(LogLevel(name: "WARNING") == .warn && LogLevel(name: "debug") == .debug && LogLevel(name: "loud") == nil)
    }

    @Test func contextFieldsFollowTheMessageOnEveryLine() {
        let lines = Lines()
        let log = Logger(minimumLevel: .debug, output: lines.output).with(["backend": "vault"]).with(["component": "x"])
        log.debug("a", ["key_id": "k"])
        log.warn("b")
        let texts = lines.all.withLock { $0 }.map { String(decoding: $0, as: UTF8.self) }
        #expect(texts[0].hasSuffix(#""msg":"a","backend":"vault","component":"x","key_id":"k"}"# + "\n"))
        #expect(texts[1].hasSuffix(#""msg":"b","backend":"vault","component":"x"}"# + "\n"))
    }

    @Test func messagesAndFieldsAreEscapedToPrintableASCII() throws {
        let lines = Lines()
        let log = Logger(output: lines.output)
        let hostile = "line\nbreak \"quoted\" \u{1B}[31m \u{2028} é"
        log.error(hostile, [hostile: hostile])
        let raw = try #require(lines.all.withLock { $0.first })
        #expect(raw.dropLast().allSatisfy { $0 >= 0x20 && $0 < 0x7F })
        let object = try #require(lines.objects.first)
        #expect(object["msg"]?.string == hostile && object[hostile]?.string == hostile)
    }
}
