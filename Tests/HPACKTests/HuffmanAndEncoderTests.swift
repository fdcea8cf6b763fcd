// The Huffman code table itself, and the encoder's choices: references, indexing, size updates.
import Testing
@testable import HPACK

@Suite("Huffman code")
struct HuffmanTests {
    @Test func tableIsTheCanonicalCodeOfAppendixB() {
        #expect(Huffman.codeTable.count == 257)
        // The code is complete (Kraft sum exactly 1) and canonical: codes follow from the lengths in symbol order
        // within each length, so a single mistyped entry breaks this.
        let kraft = Huffman.codeTable.reduce(UInt64(0)) { $0 + (UInt64(1) << (30 - UInt64($1.length))) }
        #expect(kraft == 1 << 30)
        let order = (0...256).sorted {
            (Huffman.codeTable[$0].length, $0) < (Huffman.codeTable[$1].length, $1)
        }
        var code: UInt32 = 0
        var previousLength = Huffman.codeTable[order[0]].length
        for (position, symbol) in order.enumerated() {
            let length = Huffman.codeTable[symbol].length
            if position > 0 { code = (code + 1) << UInt32(length - previousLength) }
            previousLength = length
            #expect(Huffman.codeTable[symbol].code == code, "symbol \(symbol)")
        }
        // Spot checks against RFC 7541 Appendix B.
        #expect(Huffman.codeTable[Int(UInt8(ascii: "0"))] == (0x0, 5))
        #expect(Huffman.codeTable[Int(UInt8(ascii: "a"))] == (0x3, 5))
        #expect(Huffman.codeTable[Int(UInt8(ascii: " "))] == (0x14, 6))
        #expect(Huffman.codeTable[0] == (0x1FF8, 13))
        #expect(Huffman.codeTable[255] == (0x3FFFFEE, 26))
        #expect(Huffman.codeTable[256] == (0x3FFFFFFF, 30))
    }

    @Test func everySymbolRoundTripsAloneAndTogether() throws {
        for symbol in 0...255 {
            try roundTrip([UInt8(symbol)])
            try roundTrip([UInt8(symbol), UInt8(ascii: "a"), UInt8(symbol), UInt8(symbol)])
        }
        try roundTrip(Array(0...255))
        try roundTrip([])
    }

    private func roundTrip(_ input: [UInt8]) throws {
        var encoded: [UInt8] = []
        input.withUnsafeBufferPointer { Huffman.encode($0, into: &encoded) }
        #expect(encoded.count == input.withUnsafeBufferPointer { Huffman.encodedLength($0) })
        let (string, octets) = try encoded.withUnsafeBufferPointer { (buffer) throws(HPACKError) in
            try Huffman.decode(buffer)
        }
        #expect(octets == input.count)
        #expect(string == String(decoding: input, as: UTF8.self))
    }

    @Test func validPaddingIsAccepted() throws {
        // "a0" = 00011 00000 then six 1s of padding.
        let (string, _) = try [UInt8]([0b0001_1000, 0b0011_1111]).withUnsafeBufferPointer {
            (buffer) throws(HPACKError) in try Huffman.decode(buffer)
        }
        #expect(string == "a0")
    }
}

@Suite("Encoder")
struct EncoderTests {
    private let grpcRequest = fields([
        (":method", "POST"), (":scheme", "http"), (":path", "/v2.KeyManagementService/Decrypt"),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("user-agent", "grpc-go/1.65.0"),
        ("te", "trailers"), ("grpc-timeout", "2999842u"),
    ])

    @Test func repeatedFieldsBecomeOneOctetReferences() throws {
        var encoder = HPACKEncoder()
        var decoder = HPACKDecoder()
        var first: [UInt8] = []
        encoder.encode(grpcRequest, into: &first)
        #expect(first.prefix(2) == [0x83, 0x86])  // static :method POST, :scheme http
        var second: [UInt8] = []
        encoder.encode(grpcRequest, into: &second)
        #expect(second.count == grpcRequest.count)
        #expect(try decoder.decode(first[...]) == grpcRequest)
        #expect(try decoder.decode(second[...]) == grpcRequest)
        #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
    }

    @Test func withoutIndexingTheTableStaysEmpty() throws {
        var encoder = HPACKEncoder(useHuffman: false, useIndexing: false)
        var decoder = HPACKDecoder()
        for _ in 0..<2 {
            var block: [UInt8] = []
            encoder.encode(grpcRequest, into: &block)
            #expect(block.count > grpcRequest.count * 2)
            #expect(try decoder.decode(block[...]) == grpcRequest)
        }
        #expect(encoder.dynamicTableSize == 0)
        #expect(decoder.dynamicTableSize == 0)
    }

    @Test func huffmanOnlyWhenShorter() {
        var encoder = HPACKEncoder(useHuffman: true, useIndexing: false)
        var block: [UInt8] = []
        // "307" is 3 octets either way: sent raw. "no-cache" shrinks to 6: sent Huffman-coded.
        encoder.encode(fields([(":status", "307"), ("cache-control", "no-cache")]), into: &block)
        #expect(hex(block) == "0803333037" + "0f09" + "86a8eb10649cbf")
    }

    @Test func shrinkingEmitsSizeUpdatesAndEvicts() throws {
        var encoder = HPACKEncoder()
        var decoder = HPACKDecoder()
        var block: [UInt8] = []
        encoder.encode(grpcRequest, into: &block)
        _ = try decoder.decode(block[...])

        // SETTINGS_HEADER_TABLE_SIZE 0: the next block starts with an update to 0 and nothing is indexed.
        encoder.setMaxTableSize(0)
        decoder.setMaxTableSizeLimit(0)
        #expect(encoder.dynamicTableSize == 0)
        block = []
        encoder.encode(grpcRequest, into: &block)
        #expect(block.first == 0x20)
        #expect(try decoder.decode(block[...]) == grpcRequest)
        #expect(decoder.dynamicTableSize == 0)
        block = []
        encoder.encode([], into: &block)
        #expect(block.isEmpty)  // the update is sent once

        // Shrink to 100, then back to 4096 before the next block: both are signalled, smallest first.
        encoder.setMaxTableSize(100)
        encoder.setMaxTableSize(4096)
        decoder.setMaxTableSizeLimit(4096)
        block = []
        encoder.encode(grpcRequest, into: &block)
        #expect(block.prefix(5) == [0x3F, 0x45, 0x3F, 0xE1, 0x1F])
        #expect(try decoder.decode(block[...]) == grpcRequest)
        #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
    }

    @Test func tableNeverGrowsPastTheInitialSize() {
        var encoder = HPACKEncoder(maxTableSize: 4096)
        encoder.setMaxTableSize(1 << 20)
        #expect(encoder.dynamicTableMaxSize == 4096)
        var block: [UInt8] = []
        encoder.encode(grpcRequest, into: &block)
        #expect(block.first == 0x83)  // no size update: nothing changed
    }

    @Test func fieldsLargerThanTheTableAreNotIndexed() throws {
        var encoder = HPACKEncoder(maxTableSize: 256, useHuffman: false)
        var decoder = HPACKDecoder(maxTableSize: 256)
        let big = fields([("x-big", String(repeating: "v", count: 300)), ("x-small", "1")])
        var block: [UInt8] = []
        encoder.encode(big, into: &block)
        #expect(block.first == 0x00)  // literal without indexing, new name
        #expect(try decoder.decode(block[...]) == big)
        #expect(encoder.dynamicTableEntries == fields([("x-small", "1")]))
        #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
    }

    @Test func evictedEntriesAreNoLongerReferenced() throws {
        // A 100-octet table holds one of these 66-octet entries at a time.
        var encoder = HPACKEncoder(maxTableSize: 100, useHuffman: false)
        var decoder = HPACKDecoder(maxTableSize: 100)
        let a = HeaderField(name: "a", value: String(repeating: "1", count: 33))
        let b = HeaderField(name: "b", value: String(repeating: "2", count: 33))
        for list in [[a], [b], [a], [a, a, b, b]] {
            var block: [UInt8] = []
            encoder.encode(list, into: &block)
            #expect(try decoder.decode(block[...]) == list)
            #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
            #expect(encoder.dynamicTableEntries.count == 1)
        }
    }
}

@Suite("Pre-encoded header blocks")
struct PreEncodedHeadersTests {
    static let fields = [HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc"),
                         HeaderField(name: "grpc-status", value: "0")]

    @Test func firstUseFillsTheTableThenOnlyIndicesAreSent() throws {
        let pre = PreEncodedHeaders(Self.fields)
        var encoder = HPACKEncoder()
        var decoder = HPACKDecoder(maxHeaderListSize: 1 << 20)
        #expect(encoder.readyBlock(for: pre) == nil)
        var first: [UInt8] = []
        encoder.encode(pre, into: &first)
        #expect(encoder.readyBlock(for: pre) == [0x88, 0xbf, 0xbe])
        #expect(try decoder.decode(first[...]) == Self.fields)
        #expect(encoder.dynamicTableEntries == Array(Self.fields.dropFirst().reversed()))
        #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
        for _ in 0..<3 {
            var block: [UInt8] = []
            encoder.encode(pre, into: &block)
            // :status 200 is static 8; content-type went in first (now 63), grpc-status second (62).
            #expect(block == [0x88, 0xbf, 0xbe])
            #expect(try decoder.decode(block[...]) == Self.fields)
        }
        #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
        // A size update owed must go first: no ready-made block until it has been sent.
        encoder.setMaxTableSize(1024)
        #expect(encoder.readyBlock(for: pre) == nil)
        var resized: [UInt8] = []
        encoder.encode(pre, into: &resized)
        decoder.setMaxTableSizeLimit(1024)
        #expect(try decoder.decode(resized[...]) == Self.fields)
        #expect(encoder.readyBlock(for: pre) == [0x88, 0xbf, 0xbe])
    }

    @Test func interleavedListsAndEvictionStayInStepWithTheDecoder() throws {
        let headers = PreEncodedHeaders(Array(Self.fields.prefix(2)))
        let trailers = PreEncodedHeaders([Self.fields[2]])
        var encoder = HPACKEncoder(maxTableSize: 256)
        var decoder = HPACKDecoder(maxTableSize: 256, maxHeaderListSize: 1 << 20)
        var sizes: [Int] = []
        for round in 0..<40 {
            for (pre, expected) in [(headers, headers.fields), (trailers, trailers.fields)] {
                var block: [UInt8] = []
                encoder.encode(pre, into: &block)
                #expect(try decoder.decode(block[...]) == expected, "round \(round)")
                if pre.id == trailers.id { sizes.append(block.count) }
            }
            if round % 5 == 4 {
                // Other fields (an error's grpc-message, say) push the entries out of a small table.
                let other = [HeaderField(name: "grpc-message", value: String(repeating: "x", count: 90 + round))]
                var block: [UInt8] = []
                encoder.encode(other, into: &block)
                #expect(try decoder.decode(block[...]) == other)
            }
            #expect(decoder.dynamicTableEntries == encoder.dynamicTableEntries)
        }
        // Re-inserted after each eviction, one index octet otherwise.
        #expect(sizes.filter { $0 == 1 }.count >= 30)
        #expect(sizes.contains { $0 > 1 })
    }

    @Test func withoutATableTheBlockIsTheOneEncodedOnce() throws {
        let pre = PreEncodedHeaders(Self.fields)
        for var encoder in [HPACKEncoder(maxTableSize: 0), HPACKEncoder(useIndexing: false)] {
            var decoder = HPACKDecoder(maxHeaderListSize: 1 << 20)
            for _ in 0..<2 {
                var block: [UInt8] = []
                encoder.encode(pre, into: &block)
                #expect(block == pre.block)
                #expect(try decoder.decode(block[...]) == Self.fields)
            }
            #expect(encoder.dynamicTableSize == 0)
            #expect(decoder.dynamicTableSize == 0)
        }
    }

    @Test func aSizeUpdateOwedGoesFirst() throws {
        let pre = PreEncodedHeaders([HeaderField(name: "grpc-status", value: "0")])
        var encoder = HPACKEncoder()
        encoder.setMaxTableSize(0)
        var block: [UInt8] = []
        encoder.encode(pre, into: &block)
        #expect(block == [0x20] + pre.block)
        var decoder = HPACKDecoder(maxHeaderListSize: 1 << 20)
        #expect(try decoder.decode(block[...]) == pre.fields)
    }
}
