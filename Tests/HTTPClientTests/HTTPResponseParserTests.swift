import Testing
@testable import HTTPClient

private func parse(_ text: String, atEOF: Bool = false, limits: HTTPParserLimits = .init()) throws(HTTPParseError) -> HTTPParseOutcome {
    try HTTPResponseParser.parse(Array(text.utf8)[...], atEOF: atEOF, limits: limits)
}

private func complete(_ text: String, atEOF: Bool = false) throws -> (HTTPResponse, Int) {
    guard case .complete(let response, let consumed) = try parse(text, atEOF: atEOF) else {
        Issue.record("expected a complete response for \(text.debugDescription)")
        throw HTTPParseError.truncated
    }
    return (response, consumed)
}

@Suite struct HTTPResponseParserTests {
    @Test func contentLengthBody() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}NEXT"
        let (r, consumed) = try complete(text)
        #expect(r.status == 200 && r.reason == "OK" && r.body == Array("{}".utf8) && r.keepAlive)
        #expect(r.header("content-type") == "application/json")
        #expect(consumed == text.utf8.count - 4)
    }

    @Test func everySplitOfAResponseNeedsMoreUntilComplete() throws {
        let text = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".utf8)
        for cut in 0..<text.count {
            #expect(try HTTPResponseParser.parse(text[0..<cut], atEOF: false) == .needMore, "cut at \(cut)")
        }
        guard case .complete(let r, let consumed) = try HTTPResponseParser.parse(text[...], atEOF: false) else {
            Issue.record("not complete"); return
        }
        #expect(String(decoding: r.body, as: UTF8.self) == "hello world")
        #expect(consumed == text.count)
    }

    @Test func noBodyStatusesAndInterimResponses() throws {
        let (r204, _) = try complete("HTTP/1.1 204 No Content\r\n\r\n")
        #expect(r204.status == 204 && r204.body.isEmpty)
        let (r, _) = try complete("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        #expect(r.status == 200 && r.body == [UInt8(ascii: "x")])
    }

    @Test func connectionCloseAndEOFDelimitedBodies() throws {
        let (closing, _) = try complete("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n")
        #expect(!closing.keepAlive)
        #expect(try parse("HTTP/1.1 200 OK\r\n\r\nabc") == .needMore)
        let (eofBody, _) = try complete("HTTP/1.1 200 OK\r\n\r\nabc", atEOF: true)
        #expect(eofBody.body == Array("abc".utf8) && !eofBody.keepAlive)
        let (http10, _) = try complete("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(!http10.keepAlive)
    }

    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", HTTPParseError.truncated),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", .truncated),
        ("HTTP/1.1 200 OK\r\nContent-Le", .truncated),
    ])
    func truncatedAtEOF(text: String, expected: HTTPParseError) {
        #expect(throws: expected) { try parse(text, atEOF: true) }
    }

    @Test(arguments: [
        ("HTTP/2 200 OK\r\n\r\n", HTTPParseError.malformedStatusLine),
        ("HTTP/1.1 20x OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 099 Low\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 101 Switching\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 200OK\r\n\r\n", .malformedStatusLine),
        ("HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nX: a\u{01}b\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\nX: y\r\n\r\n", .malformedHeader),
        ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", .invalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", .conflictingFraming),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .unsupportedTransferEncoding),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", .malformedChunk),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", .malformedChunk),
    ])
    func malformedResponsesAreRejected(text: String, expected: HTTPParseError) {
        #expect(throws: expected) { try parse(text) }
    }

    @Test func oversizedInputIsBounded() throws {
        var limits = HTTPParserLimits()
        limits.maxBodyBytes = 10
        limits.maxHeaderBytes = 64
        limits.maxHeaderCount = 2
        #expect(throws: HTTPParseError.bodyTooLarge) { try parse("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", limits: limits) }
        #expect(throws: HTTPParseError.bodyTooLarge) {
            try parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\n", limits: limits)
        }
        #expect(throws: HTTPParseError.bodyTooLarge) { try parse("HTTP/1.1 200 OK\r\n\r\n" + String(repeating: "x", count: 11), limits: limits) }
        #expect(throws: HTTPParseError.headersTooLarge) { try parse("HTTP/1.1 200 OK\r\nX: " + String(repeating: "y", count: 100), limits: limits) }
        #expect(throws: HTTPParseError.tooManyHeaders) { try parse("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits: limits) }
        // A long run of interim responses is consumed without recursion or unbounded state.
        let interim = String(repeating: "HTTP/1.1 100 Continue\r\n\r\n", count: 1000)
        #expect(try parse(interim) == .needMore)
    }

    @Test func randomMutationsNeverCrash() {
        var rng = SystemRandomNumberGenerator()
        let seed = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n".utf8)
        var completed = 0
        for _ in 0..<3000 {
            var bytes = seed
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes.remove(at: i)
                default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: i)
                }
                if bytes.isEmpty { bytes = [0] }
            }
            for eof in [false, true] {
                if case .complete(_, let consumed) = try? HTTPResponseParser.parse(bytes[...], atEOF: eof) {
                    #expect(consumed <= bytes.count)
                    completed += 1
                }
            }
        }
        #expect(completed < 6000)  // the seed frames with both CL and TE: most mutants must still be refused
    }
}
