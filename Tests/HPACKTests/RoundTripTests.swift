// Encoder -> decoder round trips over random header lists, with table size changes between blocks.
import Testing
import HPACK

@Suite("Round trips")
struct RoundTripTests {
    @Test(arguments: [(true, true), (true, false), (false, true), (false, false)])
    func randomListsRoundTrip(huffman: Bool, indexing: Bool) throws {
        var generator = HeaderListGenerator(seed: huffman ? (indexing ? 1 : 2) : (indexing ? 3 : 4))
        for _ in 0..<40 {
            let initial = Bool.random(using: &generator.rng) ? 4096 : generator.tableSize()
            var encoder = HPACKEncoder(maxTableSize: initial, useHuffman: huffman, useIndexing: indexing)
            var decoder = HPACKDecoder(maxTableSize: initial, maxHeaderListSize: 1 << 20)
            var previous: [HeaderField]?
            for _ in 0..<100 {
                if Int.random(in: 0..<10, using: &generator.rng) == 0 {
                    // A SETTINGS change: acknowledged before the encoder's next block.
                    let size = generator.tableSize()
                    encoder.setMaxTableSize(size)
                    decoder.setMaxTableSizeLimit(size)
                }
                // Half the blocks repeat the previous list with at most one change, as a client's requests do.
                let list = previous.map { Bool.random(using: &generator.rng) ? generator.next(after: $0) : generator.list() } ?? generator.list()
                previous = list
                var block: [UInt8] = []
                encoder.encode(list, into: &block)
                let decoded = try decoder.decode(block[...])
                #expect(decoded == list)
                #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
                #expect(decoder.dynamicTableSize == encoder.dynamicTableSize)
                #expect(encoder.dynamicTableSize <= encoder.dynamicTableMaxSize)
                if decoded != list { return }
            }
        }
    }

    @Test func aRepeatedListIsSentAsIndexesOnly() throws {
        var encoder = HPACKEncoder()
        var decoder = HPACKDecoder(maxHeaderListSize: 1 << 20)
        let list = [HeaderField(name: ":method", value: "POST"), HeaderField(name: ":path", value: "/v2.KeyManagementService/Decrypt"),
                    HeaderField(name: "te", value: "trailers"), HeaderField(name: "grpc-timeout", value: "2999999u")]
        var first: [UInt8] = [], second: [UInt8] = []
        encoder.encode(list, into: &first)
        encoder.encode(list, into: &second)
        #expect(second.count == list.count && second.allSatisfy { $0 & 0x80 != 0 })  // one indexed octet per field
        #expect(try decoder.decode(first[...]) == list && decoder.decode(second[...]) == list)
        // Evicted by a table size change: the same list is sent in full again and still decodes.
        encoder.setMaxTableSize(0)
        decoder.setMaxTableSizeLimit(0)
        var third: [UInt8] = []
        encoder.encode(list, into: &third)
        #expect(third.count > second.count + 8)
        #expect(try decoder.decode(third[...]) == list)
    }

    @Test func blocksDecodeFromAnySliceOffset() throws {
        // HTTP/2 hands the decoder a slice of a larger buffer; indices must be relative to the slice.
        var encoder = HPACKEncoder()
        var decoder = HPACKDecoder()
        let list = fields([(":path", "/v2.KeyManagementService/Encrypt"), ("x-id", "42")])
        var buffer: [UInt8] = [0xFF, 0xFF, 0xFF]
        encoder.encode(list, into: &buffer)
        buffer.append(0xFF)
        #expect(try decoder.decode(buffer[3..<(buffer.count - 1)]) == list)
    }
}
