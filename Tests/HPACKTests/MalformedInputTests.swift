// Malformed header blocks: each fails with the error that names what is wrong, and nothing traps.
import Testing
@testable import HPACK

struct MalformedCase: Sendable, CustomTestStringConvertible {
    var name: String
    var block: String
    var error: HPACKError
    var testDescription: String { name }
}

@Suite("Malformed input")
struct MalformedInputTests {
    @Test(arguments: [
        MalformedCase(name: "indexed 0", block: "80", error: .invalidIndex(0)),
        MalformedCase(name: "indexed past an empty dynamic table", block: "be", error: .invalidIndex(62)),
        MalformedCase(name: "literal name index past the tables", block: "7e00", error: .invalidIndex(62)),
        MalformedCase(name: "never-indexed name index past the tables", block: "1f2f00", error: .invalidIndex(62)),
        MalformedCase(name: "integer prefix announces continuation, block ends", block: "ff", error: .truncatedInteger),
        MalformedCase(name: "continuation bit on the last octet", block: "ff80", error: .truncatedInteger),
        MalformedCase(name: "integer with six continuation octets", block: "ff8080808080 00",
                      error: .integerOverflow),
        MalformedCase(name: "integer above 2^32-1", block: "ff80808080 10", error: .integerOverflow),
        MalformedCase(name: "huge index", block: "ffffffffff 0f", error: .integerOverflow),
        MalformedCase(name: "literal without its name string", block: "40", error: .truncatedInteger),
        MalformedCase(name: "name string longer than the block", block: "400561", 
                      error: .truncatedString(declared: 5, remaining: 1)),
        MalformedCase(name: "string length near 2^28 with 2 octets left", block: "407f ffffff7f 6162",
                      error: .truncatedString(declared: 127 + (1 << 28) - 1, remaining: 2)),
        MalformedCase(name: "value missing", block: "04", error: .truncatedInteger),
        MalformedCase(name: "value string truncated", block: "04036162",
                      error: .truncatedString(declared: 3, remaining: 2)),
        MalformedCase(name: "Huffman EOS in a value", block: "0484ffffffff", error: .huffmanEOS),
        MalformedCase(name: "Huffman EOS after a symbol", block: "0485 1fffffffff", error: .huffmanEOS),
        MalformedCase(name: "Huffman padding of zeros", block: "048100", error: .invalidHuffmanPadding),
        MalformedCase(name: "Huffman padding of 8 ones", block: "0481ff", error: .invalidHuffmanPadding),
        MalformedCase(name: "Huffman padding longer than 7 bits after a symbol", block: "04821fff",
                      error: .invalidHuffmanPadding),
        MalformedCase(name: "Huffman code cut short", block: "0481fe", error: .invalidHuffmanPadding),
        MalformedCase(name: "Huffman-coded name with bad padding", block: "008100 00", error: .invalidHuffmanPadding),
        MalformedCase(name: "size update after a field", block: "8220", error: .sizeUpdateNotAtStart),
        MalformedCase(name: "size update after a literal", block: "04016120",
                      error: .sizeUpdateNotAtStart),
        MalformedCase(name: "size update above the limit", block: "3fe21f",
                      error: .sizeUpdateAboveLimit(requested: 4097, limit: 4096)),
        MalformedCase(name: "second size update above the limit", block: "203fe21f",
                      error: .sizeUpdateAboveLimit(requested: 4097, limit: 4096)),
        MalformedCase(name: "size update truncated", block: "3f", error: .truncatedInteger),
    ])
    func malformedBlockFails(_ test: MalformedCase) {
        var decoder = HPACKDecoder()
        #expect(decodeResult(&decoder, bytes(hex: test.block)) == .failure(test.error))
    }

    @Test func everyTruncationOfValidBlocksFailsOrDecodesAPrefix() throws {
        // Cutting a valid block anywhere must never trap; it either errors or yields a shorter valid list.
        for example in c3 + c4 + c5 + c6 {
            let block = bytes(hex: example.block)
            for cut in 0..<block.count {
                var decoder = HPACKDecoder(maxTableSize: 4096)
                if case .success(let list) = decodeResult(&decoder, Array(block[..<cut])) {
                    #expect(list.count < example.headers.count || cut == block.count)
                }
            }
        }
    }

    @Test func sizeUpdateLimitFollowsSettings() {
        var decoder = HPACKDecoder()
        decoder.setMaxTableSizeLimit(8192)
        #expect(decodeResult(&decoder, bytes(hex: "3fe13f")) == .success([]))  // 8192 = 31 + 8161
        #expect(decoder.dynamicTableMaxSize == 8192)
        #expect(decodeResult(&decoder, bytes(hex: "3fe23f"))
            == .failure(.sizeUpdateAboveLimit(requested: 8193, limit: 8192)))
    }

    @Test func twoConsecutiveSizeUpdatesAtTheStart() throws {
        var decoder = HPACKDecoder()
        _ = try decoder.decode(bytes(hex: "400161016240016301 64")[...])  // two entries
        #expect(decoder.dynamicTableEntries.count == 2)
        // Update to 0 (flushes), then to 4096, then a field: all valid in one block.
        let list = try decoder.decode(bytes(hex: "20 3fe11f 82")[...])
        #expect(list == fields([(":method", "GET")]))
        #expect(decoder.dynamicTableEntries.isEmpty)
        #expect(decoder.dynamicTableMaxSize == 4096)
        #expect(decodeResult(&decoder, bytes(hex: "be")) == .failure(.invalidIndex(62)))
    }

    @Test func loweredLimitRequiresASizeUpdate() throws {
        var decoder = HPACKDecoder()
        _ = try decoder.decode(bytes(hex: "400161016240016301 64")[...])
        decoder.setMaxTableSizeLimit(34)
        #expect(decodeResult(&decoder, bytes(hex: "82")) == .failure(.missingSizeUpdate))

        var second = HPACKDecoder()
        _ = try second.decode(bytes(hex: "400161016240016301 64")[...])
        second.setMaxTableSizeLimit(34)
        #expect(decodeResult(&second, bytes(hex: "3f04")) == .failure(.sizeUpdateAboveLimit(requested: 35, limit: 34)))
        // An update within the new limit keeps the newest entry that fits (c: d, 34 octets).
        var third = HPACKDecoder()
        _ = try third.decode(bytes(hex: "400161016240016301 64")[...])
        third.setMaxTableSizeLimit(34)
        #expect(try third.decode(bytes(hex: "3f03 be")[...]) == fields([("c", "d")]))
        #expect(third.dynamicTableSize == 34)
        // The requirement is met once; later blocks need no update.
        #expect(try third.decode(bytes(hex: "be")[...]) == fields([("c", "d")]))
        // The first block after the change must carry it, even an empty one (found by comparing the fuzz corpus
        // with Python hpack, which also rejects it).
        var fourth = HPACKDecoder()
        fourth.setMaxTableSizeLimit(0)
        #expect(decodeResult(&fourth, []) == .failure(.missingSizeUpdate))
        var fifth = HPACKDecoder()
        fifth.setMaxTableSizeLimit(0)
        #expect(try fifth.decode(bytes(hex: "20 82")[...]) == fields([(":method", "GET")]))
        #expect(try fifth.decode([][...]) == [])
    }

    @Test func raisedLimitNeedsNoUpdate() throws {
        var decoder = HPACKDecoder()
        decoder.setMaxTableSizeLimit(65536)
        #expect(try decoder.decode(bytes(hex: "82")[...]) == fields([(":method", "GET")]))
        #expect(decoder.dynamicTableMaxSize == 4096)
    }

    @Test func headerListTooLargeFailsAndKeepsTheTableInSync() throws {
        // Each field "a: <30 x's>" is 1 + 30 + 32 = 63 octets; the limit of 100 allows one.
        var decoder = HPACKDecoder(maxHeaderListSize: 100)
        let value = String(repeating: "x", count: 30)
        var encoder = HPACKEncoder(useHuffman: false)
        var block: [UInt8] = []
        encoder.encode(fields([("a", value), ("b", value)]), into: &block)
        #expect(decodeResult(&decoder, block) == .failure(.headerListTooLarge(limit: 100)))
        // Both entries were still inserted: the next block's references resolve.
        var next: [UInt8] = []
        encoder.encode(fields([("b", value)]), into: &next)
        #expect(next == [0xBE])
        #expect(try decoder.decode(next[...]) == fields([("b", value)]))
        #expect(decoder.dynamicTableEntries == fields([("b", value), ("a", value)]))
    }

    @Test func repeatedReferencesCountTowardsTheListSize() {
        // One 4000-octet entry referenced many times: an "HPACK bomb" stopped by maxHeaderListSize.
        var decoder = HPACKDecoder(maxHeaderListSize: 16384)
        var block: [UInt8] = [0x40, 0x01, 0x61]
        appendInteger(3900, prefixBits: 7, flags: 0, to: &block)
        block += [UInt8](repeating: 0x62, count: 3900)
        block += [UInt8](repeating: 0xBE, count: 1000)
        #expect(decodeResult(&decoder, block) == .failure(.headerListTooLarge(limit: 16384)))
        #expect(decoder.dynamicTableEntries.count == 1)
    }

    @Test func invalidUTF8IsReplacedButAccountedInOctets() throws {
        var decoder = HPACKDecoder()
        // Literal with indexing, new name "x", raw value 0xFF: 1 + 1 + 32 = 34 octets on the wire.
        let list = try decoder.decode(bytes(hex: "40 01 78 01 ff")[...])
        #expect(list == fields([("x", "\u{FFFD}")]))
        #expect(decoder.dynamicTableSize == 34)
    }

    @Test func randomBytesNeverTrap() {
        var rng = SeededGenerator(seed: 7541)
        for _ in 0..<20_000 {
            var decoder = HPACKDecoder(maxTableSize: 256, maxHeaderListSize: 1024)
            for _ in 0..<3 {
                let block = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                _ = decodeResult(&decoder, block)
            }
        }
    }
}
