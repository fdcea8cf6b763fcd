// Replays the vault-http fuzz corpus (Tests/Fuzz/corpus/vault-http: responses captured from fake_vault.py and Go
// net/http shapes, and every input the fuzzer ever tripped on once fixed), so `swift test` keeps them as regression
// tests. Layout: a configuration octet (bit 0: at EOF, bit 1: HEAD, bit 2: small limits), then the bytes
// (Tests/Fuzz/vault-http/main.swift).
import Foundation
import Testing
import HTTPClient

@Suite struct HTTPFuzzCorpusTests {
    static let folder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/vault-http")

    /// Parses every response in `input`; each one's bytes alone give the same response and any shorter prefix needs
    /// more (the client reads whatever the socket hands it).
    static func responses(_ input: [UInt8]) throws(HTTPParseError) -> [HTTPResponse] {
        let atEOF = input[0] & 1 != 0, head = input[0] & 2 != 0
        var limits = HTTPParserLimits()
        if input[0] & 4 != 0 {
            limits.maxHeaderBytes = 128
            limits.maxHeaderCount = 4
            limits.maxBodyBytes = 64
        }
        var start = 1
        var out: [HTTPResponse] = []
        while start < input.count {
            let pending = input[start...]
            guard case .complete(let response, let consumed) = try HTTPResponseParser.parse(pending, atEOF: atEOF, requestWasHEAD: head, limits: limits)
            else { return out }
            if !atEOF {
                for cut in 0..<consumed {
                    #expect((try? HTTPResponseParser.parse(pending.prefix(cut), atEOF: false, requestWasHEAD: head, limits: limits)) == .needMore,
                            "cut at \(cut) of \(consumed)")
                }
            }
            out.append(response)
            guard response.keepAlive else { break }
            start += consumed
        }
        return out
    }

    @Test func corpusParsesAsNamed() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.folder.path).sorted()
        #expect(names.count >= 10, "the vault-http seed corpus is missing")
        for name in names {
            let input = [UInt8](try Data(contentsOf: Self.folder.appendingPathComponent(name)))
            do {
                let parsed = try Self.responses(input)
                #expect(!parsed.isEmpty || name.hasPrefix("crash-"), "\(name): no response")
                if name.hasPrefix("pipelined-keep-alive") { #expect(parsed.map(\.status) == [200, 200, 200], "\(name)") }
                if name == "chunked-pipelined" { #expect(parsed.count == 2, "\(name)") }
                if name == "sys-health-head" { #expect(parsed.first?.body == [], "\(name)") }
            } catch {
                #expect(name == "truncated-at-eof" || name.hasPrefix("crash-"), "\(name): \(error)")
            }
        }
    }

    /// Found by the fuzzer: a head whose CRLFCRLF ends within the last 4 bytes of the limit was refused as too large
    /// when the socket delivered it split inside the terminator, yet accepted in one piece. The same held for a chunk
    /// line ending at its limit. The outcome may not depend on the split.
    @Test func aHeadOrChunkLineEndingAtItsLimitParsesWhateverTheSplit() throws {
        var limits = HTTPParserLimits()
        limits.maxHeaderBytes = 64
        let status = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
        let head = status + String(repeating: "p", count: 64 - status.utf8.count) + "\r\n\r\n"
        let chunkLine = "2;" + String(repeating: "e", count: 1022) + "\r\n"  // 1024 bytes before its CRLF, the chunk line limit
        let trailer = "X-T: " + String(repeating: "t", count: 55) + "\r\n"  // trailers: 64 bytes with the closing CRLF
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunkLine + "{}\r\n0\r\n" + trailer + "\r\n"
        for text in [head + "{}", chunked] {
            let bytes = Array(text.utf8)
            guard case .complete(let response, let consumed) = try HTTPResponseParser.parse(bytes[...], atEOF: false, limits: limits) else {
                Issue.record("not complete: \(text.prefix(80))")
                continue
            }
            #expect(response.body == Array("{}".utf8) && consumed == bytes.count)
            for cut in 0..<bytes.count {
                #expect((try? HTTPResponseParser.parse(bytes[..<cut], atEOF: false, limits: limits)) == .needMore, "cut at \(cut)")
            }
        }
    }
}
