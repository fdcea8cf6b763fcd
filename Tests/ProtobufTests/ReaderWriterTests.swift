import Testing
@testable import Protobuf

struct ReaderWriterTests {
    @Test func readsTagsOfEveryValidWireType() throws {
        var reader = ProtobufReader(hexBytes("08 11 12 15 f8ffffff0f")[...])
        #expect(try reader.readTag() == FieldTag(fieldNumber: 1, wireType: .varint))
        #expect(try reader.readTag() == FieldTag(fieldNumber: 2, wireType: .fixed64))
        #expect(try reader.readTag() == FieldTag(fieldNumber: 2, wireType: .lengthDelimited))
        #expect(try reader.readTag() == FieldTag(fieldNumber: 2, wireType: .fixed32))
        #expect(try reader.readTag() == FieldTag(fieldNumber: FieldTag.maxFieldNumber, wireType: .varint))
        #expect(try reader.readTag() == nil)
    }

    @Test(arguments: [3, 4, 6, 7])
    func rejectsGroupAndUndefinedWireTypes(wireType: Int) {
        var reader = ProtobufReader([UInt8(1 << 3 | wireType)][...])
        #expect(throws: ProtobufError.invalidWireType(wireType)) { try reader.readTag() }
    }

    @Test func rejectsFieldNumberZero() {
        for key in ["00", "02", "05", "8000"] {
            var reader = ProtobufReader(hexBytes(key)[...])
            #expect(throws: ProtobufError.invalidFieldNumber(0)) { try reader.readTag() }
        }
    }

    @Test func rejectsFieldNumberAbove2To29() {
        var reader = ProtobufReader(hexBytes("8080808010")[...])  // field 2^29, wire type 0
        #expect(throws: ProtobufError.invalidFieldNumber(1 << 29)) { try reader.readTag() }
    }

    @Test func rejectsTruncatedTag() {
        var reader = ProtobufReader(hexBytes("80")[...])
        #expect(throws: ProtobufError.truncated) { try reader.readTag() }
    }

    @Test func lengthDelimitedPayloadSharesTheInput() throws {
        let storage = hexBytes("aaaa 0a03 010203 bb")
        var reader = ProtobufReader(storage[2..<7])
        #expect(try reader.readTag() == FieldTag(fieldNumber: 1, wireType: .lengthDelimited))
        let payload = try reader.readLengthDelimited()
        #expect(payload.startIndex == 4 && payload.endIndex == 7)
        #expect(Array(payload) == [1, 2, 3])
        #expect(reader.isAtEnd)
    }

    @Test func rejectsLengthPastTheEnd() {
        for input in ["0a04 010203", "0a01", "0affffffffffffffff7f", "0affffffffffffffffff01", "0a8080808008 00"] {
            var reader = ProtobufReader(hexBytes(input)[...])
            #expect(throws: ProtobufError.lengthOutOfRange, "input \(input)") {
                _ = try reader.readTag()
                _ = try reader.readLengthDelimited()
            }
        }
    }

    @Test func lengthIsBoundedByTheSliceNotTheArray() {
        // The length fits in the underlying array but not in the slice being parsed.
        let storage = hexBytes("0a03 0102 03")
        var reader = ProtobufReader(storage[0..<4])
        #expect(throws: ProtobufError.lengthOutOfRange) {
            _ = try reader.readTag()
            _ = try reader.readLengthDelimited()
        }
    }

    @Test func rejectsTruncatedFixedWidthValues() {
        var fixed32 = ProtobufReader(hexBytes("010203")[...])
        #expect(throws: ProtobufError.truncated) { try fixed32.readFixed32() }
        var fixed64 = ProtobufReader(hexBytes("01020304050607")[...])
        #expect(throws: ProtobufError.truncated) { try fixed64.readFixed64() }
    }

    @Test func readsFixedWidthValuesLittleEndian() throws {
        var reader = ProtobufReader(hexBytes("78563412 efcdab8967452301")[...])
        #expect(try reader.readFixed32() == 0x1234_5678)
        #expect(try reader.readFixed64() == 0x0123_4567_89AB_CDEF)
    }

    @Test func skipsUnknownFieldsOfEveryValidWireType() throws {
        // field 9 varint (10 bytes), field 10 fixed64, field 11 length-delimited, field 12 fixed32, then field 1.
        let input = hexBytes("48 ffffffffffffffffff01  51 0102030405060708  5a 03 aabbcc  65 01020304  0a 01 7a")
        var reader = ProtobufReader(input[...])
        var skipped: [Int] = []
        var found: [UInt8] = []
        while let tag = try reader.readTag() {
            if tag.fieldNumber == 1 {
                found = Array(try reader.readLengthDelimited())
            } else {
                try reader.skipField(tag.wireType)
                skipped.append(tag.fieldNumber)
            }
        }
        #expect(skipped == [9, 10, 11, 12])
        #expect(found == [0x7a])
    }

    @Test func skippingRejectsTruncatedUnknownFields() {
        for input in ["48 80", "51 01020304", "5a 05 aabb", "65 0102"] {
            var reader = ProtobufReader(hexBytes(input)[...])
            #expect(throws: ProtobufError.self, "input \(input)") {
                while let tag = try reader.readTag() { try reader.skipField(tag.wireType) }
            }
        }
    }

    @Test(arguments: ["ff", "c080", "eda080", "e282", "f4908080", "80", "f8888080 80"])
    func rejectsInvalidUTF8Strings(hex: String) {
        var payload = [UInt8(hexBytes(hex).count)]
        payload += hexBytes(hex)
        var reader = ProtobufReader(payload[...])
        #expect(throws: ProtobufError.invalidUTF8(field: 6)) { try reader.readString(field: 6) }
    }

    @Test func readsValidUTF8Strings() throws {
        let text = "kms.example.io é ✓ 😀"
        var writer = ProtobufWriter()
        writer.writeLengthDelimited(field: 3, text.utf8)
        var reader = ProtobufReader(writer.bytes[...])
        #expect(try reader.readTag() == FieldTag(fieldNumber: 3, wireType: .lengthDelimited))
        #expect(try reader.readString(field: 3) == text)
    }

    @Test func writerProducesTagsLengthsAndSizes() {
        var writer = ProtobufWriter()
        writer.writeLengthDelimited(field: 1, [UInt8](repeating: 7, count: 200))
        writer.writeTag(field: FieldTag.maxFieldNumber, wireType: .fixed32)
        #expect(Array(writer.bytes.prefix(3)) == hexBytes("0a c801"))
        #expect(Array(writer.bytes.suffix(5)) == hexBytes("fdffffff0f"))
        #expect(ProtobufWriter.lengthDelimitedFieldSize(field: 1, length: 200) == 203)
        #expect(ProtobufWriter.lengthDelimitedFieldSize(field: 16, length: 0) == 3)
    }
}
