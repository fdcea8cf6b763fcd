import Testing
@testable import Protobuf

struct VarintTests {
    static let vectors: [(UInt64, String)] = [
        (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16383, "ff7f"), (16384, "808001"),
        (UInt64(UInt32.max), "ffffffff0f"),
        (1 << 63, "80808080808080808001"),
        (UInt64.max, "ffffffffffffffffff01"),
    ]

    @Test(arguments: vectors)
    func encodesAndDecodesKnownVectors(value: UInt64, hex: String) throws {
        var buffer: [UInt8] = []
        Varint.encode(value, into: &buffer)
        #expect(hexString(buffer) == hex)
        #expect(Varint.encodedSize(value) == buffer.count)
        let decoded = try Varint.decode(buffer[...], at: 0)
        #expect(decoded.value == value)
        #expect(decoded.next == buffer.count)
    }

    @Test func sizesAtEverySevenBitBoundary() throws {
        for groups in 1...9 {
            let largest = (UInt64(1) << (7 * UInt64(groups))) - 1
            #expect(Varint.encodedSize(largest) == groups)
            #expect(Varint.encodedSize(largest + 1) == groups + 1)
            for value in [largest, largest + 1] {
                var buffer: [UInt8] = []
                Varint.encode(value, into: &buffer)
                #expect(buffer.count == Varint.encodedSize(value))
                #expect(try Varint.decode(buffer[...], at: 0).value == value)
            }
        }
    }

    @Test func randomValuesRoundTrip() throws {
        var rng = SeededGenerator(seed: 7)
        for _ in 0..<10_000 {
            let value = rng.next() >> UInt64.random(in: 0...63, using: &rng)
            var buffer: [UInt8] = []
            Varint.encode(value, into: &buffer)
            #expect(try Varint.decode(buffer[...], at: 0) == (value, buffer.count))
        }
    }

    @Test func acceptsNonMinimalEncodingsUpToTenBytes() throws {
        // Every protobuf parser accepts padded varints as long as they fit in 10 bytes.
        #expect(try Varint.decode(hexBytes("8000")[...], at: 0) == (0, 2))
        #expect(try Varint.decode(hexBytes("ff80808080808080 8000")[...], at: 0) == (127, 10))
    }

    @Test func rejectsElevenByteVarint() {
        #expect(throws: ProtobufError.malformedVarint) { try Varint.decode(hexBytes("80808080808080808080 00")[...], at: 0) }
        #expect(throws: ProtobufError.malformedVarint) { try Varint.decode(hexBytes("ffffffffffffffffff81 01")[...], at: 0) }
    }

    @Test func rejectsTenByteVarintOverflowing64Bits() {
        #expect(throws: ProtobufError.malformedVarint) { try Varint.decode(hexBytes("ffffffffffffffffff02")[...], at: 0) }
        #expect(throws: ProtobufError.malformedVarint) { try Varint.decode(hexBytes("ffffffffffffffffff7f")[...], at: 0) }
    }

    @Test func rejectsTruncatedVarint() {
        #expect(throws: ProtobufError.truncated) { try Varint.decode([][...], at: 0) }
        #expect(throws: ProtobufError.truncated) { try Varint.decode(hexBytes("80")[...], at: 0) }
        #expect(throws: ProtobufError.truncated) { try Varint.decode(hexBytes("ffffffffffffffffff")[...], at: 0) }
    }

    @Test func decodesWithinASliceUsingItsIndices() throws {
        let storage = hexBytes("ffff ac02 ffff")
        let slice = storage[2..<4]
        #expect(try Varint.decode(slice, at: slice.startIndex) == (300, 4))
        // The varint must not read past the slice's end into the trailing bytes.
        #expect(throws: ProtobufError.truncated) { try Varint.decode(storage[0..<2], at: 0) }
    }
}
