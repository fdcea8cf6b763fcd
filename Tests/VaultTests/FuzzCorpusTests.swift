// Replays the vault-http fuzz corpus (Tests/Fuzz/corpus/vault-http: responses captured from fake_vault.py and Go
// net/http shapes, and every input the fuzzer ever tripped on once fixed), so `swift test` keeps them as regression
// tests. Layout: a configuration octet (bit 0: at EOF, bit 1: HEAD), then the bytes (Tests/Fuzz/vault-http/main.swift).
import Foundation
import Testing
import Vault

@Suite struct VaultFuzzCorpusTests {
    static let folder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/vault-http")

    /// Parses every response in `input`; each one's bytes alone give the same response and any shorter prefix needs
    /// more (the client reads whatever the socket hands it).
    static func responses(_ input: [UInt8]) throws(HTTPParseError) -> [HTTPResponse] {
        let atEOF = input[0] & 1 != 0, head = input[0] & 2 != 0
        var start = 1
        var out: [HTTPResponse] = []
        while start < input.count {
            let pending = input[start...]
            guard case .complete(let response, let consumed) = try HTTPResponseParser.parse(pending, atEOF: atEOF, requestWasHEAD: head)
            else { return out }
            if !atEOF {
                for cut in [0, consumed / 2, consumed - 1] {
                    #expect(try HTTPResponseParser.parse(pending.prefix(cut), atEOF: false, requestWasHEAD: head) == .needMore)
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
}
