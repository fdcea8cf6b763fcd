// The client parses a growing buffer with an HTTPParseProgress, resuming where the last call stopped (issue 15 item
// 10). Resumed and from-scratch parses must agree however the bytes arrive, and the work must stay linear.
import Testing
@testable import HTTPClient

@Suite struct IncrementalParseTests {
    static let responses: [String] = [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"bcd\"}",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 33\r\n\r\n{\"errors\":[\"permission denied\"]}",
    ]

    /// Feeds `bytes` in pieces of `step` bytes to one progress; returns the first non-needMore outcome or error.
    private func resumed(_ bytes: [UInt8], step: Int, atEOFAtEnd: Bool) -> Result<HTTPParseOutcome, HTTPParseError> {
        var progress = HTTPParseProgress()
        var end = 0
        while true {
            end = min(bytes.count, end + step)
            let atEOF = atEOFAtEnd && end == bytes.count
            do throws(HTTPParseError) {
                let outcome = try HTTPResponseParser.parse(bytes[0..<end], atEOF: atEOF, progress: &progress)
                if outcome != .needMore || end == bytes.count { return .success(outcome) }
            } catch {
                return .failure(error)
            }
        }
    }

    private func scratch(_ bytes: [UInt8], atEOF: Bool) -> Result<HTTPParseOutcome, HTTPParseError> {
        do throws(HTTPParseError) { return .success(try HTTPResponseParser.parse(bytes[...], atEOF: atEOF)) } catch { return .failure(error) }
    }

    @Test(arguments: responses) func resumedParseAgreesWithAParseFromScratch(text: String) {
        let bytes = Array(text.utf8)
        for atEOF in [false, true] {
            let expected = scratch(bytes, atEOF: atEOF)
            for step in 1...8 {
                #expect(resumed(bytes, step: step, atEOFAtEnd: atEOF) == expected, "step \(step), atEOF \(atEOF): \(text.debugDescription)")
            }
        }
    }

    @Test func aBodyOfManyTinyChunksIsRefused() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        let tiny = head + String(repeating: "1\r\nx\r\n", count: HTTPResponseParser.freeChunks + 1) + "0\r\n\r\n"
        #expect(throws: HTTPParseError.tooManyChunks) { try HTTPResponseParser.parse(Array(tiny.utf8)[...], atEOF: false) }
        // As many chunks of a sensible size are fine.
        let chunk = String(repeating: "y", count: HTTPResponseParser.minAverageChunkBytes)
        let sized = head + String(repeating: "40\r\n\(chunk)\r\n", count: HTTPResponseParser.freeChunks + 1) + "0\r\n\r\n"
        guard case .complete(let r, _)? = try? HTTPResponseParser.parse(Array(sized.utf8)[...], atEOF: false) else {
            Issue.record("sensible chunks refused"); return
        }
        #expect(r.body.count == (HTTPResponseParser.freeChunks + 1) * 64)
    }

    /// 20,000 chunks fed one chunk at a time: a resumed parse does linear work, well under a second (parsing from
    /// the start on every read, as before, walks 200 million chunks: minutes).
    @Test func feedingChunksOneAtATimeIsLinear() throws {
        let chunk = Array("40\r\n".utf8) + [UInt8](repeating: 0x7a, count: 64) + Array("\r\n".utf8)
        var bytes = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        var limits = HTTPParserLimits()
        limits.maxBodyBytes = 2 * 1024 * 1024
        var progress = HTTPParseProgress()
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            var needMore = 0
            for _ in 0..<20_000 {
                bytes += chunk
                if try HTTPResponseParser.parse(bytes[...], atEOF: false, limits: limits, progress: &progress) == .needMore { needMore += 1 }
            }
            #expect(needMore == 20_000)
            bytes += Array("0\r\n\r\n".utf8)
            guard case .complete(let r, _) = try HTTPResponseParser.parse(bytes[...], atEOF: false, limits: limits, progress: &progress) else {
                Issue.record("not complete"); return
            }
            #expect(r.body.count == 20_000 * 64)
        }
        #expect(elapsed < .seconds(5), "\(elapsed)")
    }
}
