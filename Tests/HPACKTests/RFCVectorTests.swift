// RFC 7541 Appendix C: every example, decoded and (where the RFC's encoder choices are ours) encoded.
import Testing
@testable import HPACK

/// One example: the block, the list it carries, and the dynamic table after it (newest first) and its size.
struct Example: Sendable, CustomTestStringConvertible {
    var name: String
    var block: String
    var headers: [(String, String)]
    var table: [(String, String)]
    var tableSize: Int
    /// What our encoder emits when it differs from the RFC's choice (it uses Huffman only when strictly shorter).
    var ourEncoding: String?
    var testDescription: String { name }
}

private let date21 = "Mon, 21 Oct 2013 20:13:21 GMT"
private let date22 = "Mon, 21 Oct 2013 20:13:22 GMT"
private let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
private let location = "https://www.example.com"

private let request1 = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]
private let request2 = request1 + [("cache-control", "no-cache")]
private let request3 = [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
                        (":authority", "www.example.com"), ("custom-key", "custom-value")]
private let table1 = [(":authority", "www.example.com")]
private let table2 = [("cache-control", "no-cache")] + table1
private let table3 = [("custom-key", "custom-value")] + table2

private let response1 = [(":status", "302"), ("cache-control", "private"), ("date", date21), ("location", location)]
private let response2 = [(":status", "307"), ("cache-control", "private"), ("date", date21), ("location", location)]
private let response3 = [(":status", "200"), ("cache-control", "private"), ("date", date22), ("location", location),
                         ("content-encoding", "gzip"), ("set-cookie", cookie)]
private let responseTable1 = [("location", location), ("date", date21), ("cache-control", "private"), (":status", "302")]
private let responseTable2 = [(":status", "307"), ("location", location), ("date", date21), ("cache-control", "private")]
private let responseTable3 = [("set-cookie", cookie), ("content-encoding", "gzip"), ("date", date22)]

let c3 = [
    Example(name: "C.3.1", block: "828684410f7777772e6578616d706c652e636f6d",
            headers: request1, table: table1, tableSize: 57),
    Example(name: "C.3.2", block: "828684be58086e6f2d6361636865", headers: request2, table: table2, tableSize: 110),
    Example(name: "C.3.3", block: "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            headers: request3, table: table3, tableSize: 164),
]
let c4 = [
    Example(name: "C.4.1", block: "828684418cf1e3c2e5f23a6ba0ab90f4ff", headers: request1, table: table1, tableSize: 57),
    Example(name: "C.4.2", block: "828684be5886a8eb10649cbf", headers: request2, table: table2, tableSize: 110),
    Example(name: "C.4.3", block: "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            headers: request3, table: table3, tableSize: 164),
]
let c5 = [
    Example(name: "C.5.1",
            block: "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54"
                + "6e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            headers: response1, table: responseTable1, tableSize: 222),
    Example(name: "C.5.2", block: "4803333037c1c0bf", headers: response2, table: responseTable2, tableSize: 222),
    Example(name: "C.5.3",
            block: "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d"
                + "4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b207665"
                + "7273696f6e3d31",
            headers: response3, table: responseTable3, tableSize: 215),
]
let c6 = [
    Example(name: "C.6.1",
            block: "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b"
                + "97c8e9ae82ae43d3",
            headers: response1, table: responseTable1, tableSize: 222),
    // "307" is 3 octets raw and 3 Huffman-coded: the RFC chose Huffman, we send it raw (same size, cheaper).
    Example(name: "C.6.2", block: "4883640effc1c0bf", headers: response2, table: responseTable2, tableSize: 222,
            ourEncoding: "4803333037c1c0bf"),
    Example(name: "C.6.3",
            block: "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdf"
                + "cd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
            headers: response3, table: responseTable3, tableSize: 215),
]

/// Decodes a sequence of examples on one decoder, checking each list, table and table size.
private func checkDecoding(_ examples: [Example], tableSize: Int) throws {
    var decoder = HPACKDecoder(maxTableSize: tableSize)
    for example in examples {
        let decoded = try decoder.decode(bytes(hex: example.block)[...])
        #expect(decoded == fields(example.headers), "\(example.name) fields")
        #expect(decoder.dynamicTableEntries == fields(example.table), "\(example.name) table")
        #expect(decoder.dynamicTableSize == example.tableSize, "\(example.name) table size")
    }
}

/// Encodes a sequence of examples on one encoder, checking the exact bytes and each table.
private func checkEncoding(_ examples: [Example], tableSize: Int, huffman: Bool) {
    var encoder = HPACKEncoder(maxTableSize: tableSize, useHuffman: huffman, useIndexing: true)
    for example in examples {
        var block: [UInt8] = []
        encoder.encode(fields(example.headers), into: &block)
        #expect(hex(block) == example.ourEncoding ?? example.block, "\(example.name) bytes")
        #expect(encoder.dynamicTableEntries == fields(example.table), "\(example.name) table")
        #expect(encoder.dynamicTableSize == example.tableSize, "\(example.name) table size")
    }
}

@Suite("RFC 7541 Appendix C")
struct RFCVectorTests {
    @Test("C.1 integer representation", arguments: [
        (10, 5, "0a"), (1337, 5, "1f9a0a"), (42, 8, "2a"),
    ])
    func integers(value: Int, prefixBits: Int, encoded: String) throws {
        var buffer: [UInt8] = []
        appendInteger(value, prefixBits: prefixBits, flags: 0, to: &buffer)
        #expect(hex(buffer) == encoded)
        // Flag bits above the prefix must be ignored by the reader.
        var flagged = bytes(hex: encoded)
        if prefixBits < 8 { flagged[0] |= 0xFF << UInt8(prefixBits) }
        let decoded = try flagged.withUnsafeBufferPointer { (buffer) throws(HPACKError) -> (Int, Int) in
            var reader = BlockReader(buffer)
            return (try reader.readInteger(prefixBits: prefixBits), reader.position)
        }
        #expect(decoded.0 == value)
        #expect(decoded.1 == flagged.count)
    }

    @Test("C.2.1 literal with indexing")
    func literalWithIndexing() throws {
        let example = Example(name: "C.2.1", block: "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
                              headers: [("custom-key", "custom-header")], table: [("custom-key", "custom-header")],
                              tableSize: 55)
        try checkDecoding([example], tableSize: 4096)
        checkEncoding([example], tableSize: 4096, huffman: false)
    }

    @Test("C.2.2 literal without indexing")
    func literalWithoutIndexing() throws {
        let example = Example(name: "C.2.2", block: "040c2f73616d706c652f70617468",
                              headers: [(":path", "/sample/path")], table: [], tableSize: 0)
        try checkDecoding([example], tableSize: 4096)
        var encoder = HPACKEncoder(useHuffman: false, useIndexing: false)
        var block: [UInt8] = []
        encoder.encode(fields(example.headers), into: &block)
        #expect(hex(block) == example.block)
        #expect(encoder.dynamicTableSize == 0)
    }

    @Test("C.2.3 literal never indexed")
    func literalNeverIndexed() throws {
        // Our encoder has no never-indexed mode (nothing it sends is sensitive), so this one is decode-only.
        try checkDecoding([Example(name: "C.2.3", block: "100870617373776f726406736563726574",
                                   headers: [("password", "secret")], table: [], tableSize: 0)], tableSize: 4096)
    }

    @Test("C.2.4 indexed field")
    func indexedField() throws {
        let example = Example(name: "C.2.4", block: "82", headers: [(":method", "GET")], table: [], tableSize: 0)
        try checkDecoding([example], tableSize: 4096)
        checkEncoding([example], tableSize: 4096, huffman: false)
    }

    /// C.3 and C.4: requests, table 4096. C.5 and C.6: responses, table 256 with eviction.
    @Test("C.3-C.6 header list sequences", arguments: [
        ("C.3 requests without Huffman", c3, 4096, false), ("C.4 requests with Huffman", c4, 4096, true),
        ("C.5 responses without Huffman", c5, 256, false), ("C.6 responses with Huffman", c6, 256, true),
    ])
    func sequence(section: String, examples: [Example], tableSize: Int, huffman: Bool) throws {
        try checkDecoding(examples, tableSize: tableSize)
        checkEncoding(examples, tableSize: tableSize, huffman: huffman)
    }
}
