import JSON
import Testing

@Test func parsesAVaultReplyWithEveryKindOfValue() throws {
    let text = #"{"data":{"keys":{"1":1700000000,"2":{"creation_time":"2024-01-02T03:04:05Z"}},"min_decryption_version":"2","#
        + #""supports_encryption":true,"deletion_allowed":false,"type":"aes256-gcm96","batch_results":[{"plaintext":"aGk="},{"error":"bad"}],"#
        + #""wrap_info":null,"ratio":0.5}}"#
    let value = try #require(JSONValue.parse(Array(text.utf8)))
    let data = try #require(value["data"])
    #expect(data["min_decryption_version"]?.int == 2)
    #expect(data["keys"]?["1"]?.int == 1_700_000_000)
    #expect(data["keys"]?["2"]?["creation_time"]?.string == "2024-01-02T03:04:05Z")
    #expect(data["supports_encryption"]?.bool == true)
    #expect(data["deletion_allowed"]?.bool == false)
    #expect(data["type"]?.string == "aes256-gcm96")
    #expect(data["batch_results"]?.array?.count == 2)
    #expect(data["batch_results"]?.array?[1]["error"]?.string == "bad")
    #expect(data["wrap_info"] == .null)
    #expect(data["ratio"] == .number(0.5))
    #expect(data["ratio"]?.int == 0)
    #expect(data["wrap_info"]?.isNull == true)
    #expect(data["missing"] == nil)
    #expect(data["type"]?.int == nil)
}

@Test func rejectsWhatIsNotJSON() {
    for text in ["", "{", "{\"a\":}", "[1,2", "nope", "{\"a\":1}}"] {
        #expect(JSONValue.parse(Array(text.utf8)) == nil, "accepted \(text)")
    }
}

@Test func serializesIntegersWithoutFractionsAndKeysSorted() {
    let body: JSONValue = ["plaintext": "aGk=/+", "key_version": 3, "batch_input": [["ciphertext": "vault:v1:x"]], "flag": true]
    let text = String(decoding: body.serialized(), as: UTF8.self)
    #expect(text == #"{"batch_input":[{"ciphertext":"vault:v1:x"}],"flag":true,"key_version":3,"plaintext":"aGk=/+"}"#)
    #expect(JSONValue.parse(body.serialized()) == body)
}

@Test func escapesControlCharactersAndRoundTripsUnicode() throws {
    let value: JSONValue = .string("a\"b\\c\n\u{1}é😀")
    let text = String(decoding: value.serialized(), as: UTF8.self)
    #expect(!text.contains("\n"))
    #expect(try #require(JSONValue.parse(value.serialized())) == value)
}
