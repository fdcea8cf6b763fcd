// Replays the libFuzzer seed corpus (Tests/Fuzz/corpus/hpack, layout described in Tests/Fuzz/hpack/main.swift):
// every committed seed is a valid sequence of header blocks, so each block must decode, and re-encoding must
// round-trip. Crash inputs found by fuzzing get their own regression tests below.
import Foundation
import Testing
import HPACK

private let corpusDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fuzz/corpus/hpack")
private let marker: [UInt8] = [0xFE, 0xFD, 0xFC]

/// The blocks after the configuration octet.
private func blocks(of input: [UInt8]) -> [ArraySlice<UInt8>] {
    input.dropFirst().split(separator: marker, omittingEmptySubsequences: false)
}

@Suite("Fuzz corpus")
struct FuzzCorpusTests {
    @Test func seedsDecodeAndRoundTrip() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: corpusDirectory.path).sorted()
        #expect(names.count >= 10)
        for name in names {
            let input = try [UInt8](Data(contentsOf: corpusDirectory.appendingPathComponent(name)))
            try #require(!input.isEmpty)
            let config = input[0]
            var decoder = HPACKDecoder(maxTableSize: [4096, 256, 64, 0][Int(config & 0x03)],
                                       maxHeaderListSize: config & 0x04 != 0 ? 512 : 16384)
            for (number, block) in blocks(of: input).enumerated() {
                if number > 0 && config & 0x08 != 0 { decoder.setMaxTableSizeLimit(128) }
                if number > 0 && config & 0x10 != 0 { decoder.setMaxTableSizeLimit(8192) }
                let result: Result<[HeaderField], HPACKError> = Result { () throws(HPACKError) in
                    try decoder.decode(block)
                }
                if case .failure(.headerListTooLarge) = result, name == "header-list-limit" { continue }
                let list = try result.get()
                var encoder = HPACKEncoder()
                var encoded: [UInt8] = []
                encoder.encode(list, into: &encoded)
                var fresh = HPACKDecoder(maxHeaderListSize: 1 << 20)
                #expect(try fresh.decode(encoded[...]) == list, "\(name) block \(number)")
            }
        }
    }
}
