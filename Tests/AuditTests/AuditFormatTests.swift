// The line parser and the secret-free event type (the JSON writer and RFC 3339 times are tested in JSONTests).
@testable import Audit
import Crypto
import Foundation
import PeerIdentity
import Testing

@Suite struct AuditFormatTests {
    @Test func recordLineHasFixedFieldsAndParsesBack() throws {
        let body = AuditRecordFormat.body(of: sampleEvent(7, outcome: "INVALID_ARGUMENT"), seq: 3,
                                          prevChain: AuditRecordFormat.genesisChain, droppedBefore: 2)
        let chain = AuditRecordFormat.chain(key: testKey, previous: AuditRecordFormat.genesisChain, body: body)
        var line = [UInt8]()
        AuditRecordFormat.appendLine(body: body, chain: chain, to: &line)
        #expect(line.last == 0x0A)
        let text = String(decoding: line.dropLast(), as: UTF8.self)
        let object = try #require(jsonObject(text))
        #expect(Set(object.keys) == ["seq", "prev_chain", "dropped_before", "time", "op", "uid", "key_id", "backend",
                                     "outcome", "message", "latency_us", "peer", "connection", "stream",
                                     "ciphertext_sha256", "chain"])
        #expect(object["seq"] as? Int == 3)
        #expect(object["outcome"] as? String == "INVALID_ARGUMENT")
        #expect(object["ciphertext_sha256"] as? String == String(hexString(SHA256.hash([7, 1, 2, 3])).prefix(16)))
        #expect((object["peer"] as? [String: Any])?["pid"] as? Int == 100)
        let parsed = try #require(AuditLineParser.parse(line.dropLast()))
        #expect(parsed.seq == 3 && parsed.droppedBefore == 2 && parsed.chain == chain)
        #expect(parsed.prevChain == AuditRecordFormat.genesisChain)
        #expect(Array(parsed.body) == body)
    }

    /// The exact bytes of a body: the format is a contract with the verifier and every log already written.
    @Test func bodyBytesAreExactlyTheDocumentedFormat() {
        let body = AuditRecordFormat.body(of: sampleEvent(7, outcome: "INVALID_ARGUMENT"), seq: 3,
                                          prevChain: [UInt8](repeating: 0xA5, count: 32), droppedBefore: 2)
        #expect(String(decoding: body, as: UTF8.self) == "{\"seq\":3,\"prev_chain\":\"" + String(repeating: "a5", count: 32)
                + "\",\"dropped_before\":2,\"time\":\"2026-09-21T14:13:20.000000000Z\",\"op\":\"Encrypt\",\"uid\":\"uid-7\","
                + "\"key_id\":\"k1\",\"backend\":\"file\",\"outcome\":\"INVALID_ARGUMENT\",\"message\":\"failed 7\","
                + "\"latency_us\":7,\"peer\":{\"pid\":100,\"uid\":0,\"gid\":0},\"connection\":0,\"stream\":7,"
                + "\"ciphertext_sha256\":\"fa55d876033f8281\"")
    }

    /// The writer's cache (the time's second, the connection fragment, the op and result fragments) never changes a
    /// byte: records of changing seconds, peers, connections, ops, key_ids, backends and outcomes encode through one
    /// cache exactly as each does alone.
    @Test func cachedEncodingEqualsFreshEncoding() {
        var cache = AuditRecordFormat.BodyCache()
        let peers: [PeerCredentials?] = [PeerCredentials(pid: 100, uid: 0, gid: 0), PeerCredentials(pid: 101, uid: 0, gid: 0), nil,
                                   PeerCredentials(pid: 100, uid: 7, gid: 9)]
        let ops = ["Encrypt", "Decrypt", "Status", "/other/\"Path\u{7}"]
        let keyIDs: [String?] = ["k1", "k2", nil, "", "k\u{e9}"]
        let backends = ["file", "vault", ""]
        let outcomes = ["OK", "INVALID_ARGUMENT", "OK", "UNAVAILABLE"]
        for i in 0..<200 {
            var event = sampleEvent(i, op: ops[(i / 2) % ops.count], keyID: keyIDs[(i / 3) % keyIDs.count],
                                    outcome: outcomes[(i / 4) % outcomes.count],
                                    time: Date(timeIntervalSince1970: 1_790_000_000 + Double(i / 3) * 0.7 + 0.000_123_456))
            event.backend = backends[(i / 6) % backends.count]
            event.uid = i % 5 == 0 ? nil : event.uid
            event.peer = peers[(i / 5) % peers.count]
            event.connection = UInt64(i / 7)
            var cached = [UInt8]()
            AuditRecordFormat.appendBody(of: event, seq: UInt64(i + 1), prevChain: nil, droppedBefore: 0, cache: &cache,
                                         to: &cached)
            #expect(cached == AuditRecordFormat.body(of: event, seq: UInt64(i + 1), prevChain: nil, droppedBefore: 0), "\(i)")
        }
    }

    @Test func optionalFieldsAreNullOrAbsent() throws {
        let event = AuditEvent(time: Date(), op: "/bogus/Method", backend: "", outcome: "UNIMPLEMENTED", latencyMicros: 1)
        let body = AuditRecordFormat.body(of: event, seq: 1, prevChain: nil, droppedBefore: 0)
        let object = try #require(jsonObject(String(decoding: body + [0x7D], as: UTF8.self)))
        #expect(object["uid"] is NSNull && object["key_id"] is NSNull && object["peer"] is NSNull)
        #expect(object["message"] == nil && object["ciphertext_sha256"] == nil && object["prev_chain"] == nil)
        #expect(object["dropped_before"] == nil)
    }

    /// The event type is the only way data reaches the log; none of its fields may hold a secret. A new field
    /// must be reviewed here before it can be logged.
    @Test func eventTypeHasNoSecretBearingFields() {
        let fields = Mirror(reflecting: sampleEvent(1)).children.compactMap(\.label)
        #expect(fields == ["time", "op", "uid", "keyID", "backend", "outcome", "message", "latencyMicros", "peer",
                           "connection", "stream", "ciphertext"])
    }

    @Test func ciphertextIsLoggedOnlyAsAShortHash() {
        var event = sampleEvent(1)
        let ciphertext = Array("very-distinctive-ciphertext-bytes".utf8)
        event.ciphertext = ciphertext
        let text = String(decoding: AuditRecordFormat.body(of: event, seq: 1, prevChain: nil, droppedBefore: 0), as: UTF8.self)
        #expect(!text.contains("very-distinctive"))
        #expect(!text.contains(hexString(ciphertext)))
        #expect(!text.contains(Data(ciphertext).base64EncodedString()))
        #expect(text.contains("\"ciphertext_sha256\":\"\(hexString(SHA256.hash(ciphertext).prefix(8)))\""))
    }

    @Test func parserRejectsGarbageWithoutTrapping() {
        var generator = SystemRandomNumberGenerator()
        let valid = Array(#"{"seq":1,"time":"x","chain":"0000000000000000000000000000000000000000000000000000000000000000"}"#.utf8)
        #expect(AuditLineParser.parse(valid[...]) != nil)
        for _ in 0..<5000 {
            var line = valid
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let i = Int.random(in: 0..<line.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: line[i] = UInt8.random(in: 0...255, using: &generator)
                case 1: line.remove(at: i)
                default: line.insert(UInt8.random(in: 0...255, using: &generator), at: i)
                }
                if line.isEmpty { break }
            }
            _ = AuditLineParser.parse(line[...])
        }
        for bad in ["", "{", #"{"seq":"#, #"{"seq":99999999999999999999999,"time":"#, #"{"seq":01,"time":"#] {
            #expect(AuditLineParser.parse(Array(bad.utf8)[...]) == nil)
        }
    }

    @Test func hmacKeyFileFormats() throws {
        let key = (0..<32).map { UInt8($0) }
        #expect(try AuditHMACKeyFile.parse(Array((hexString(key) + "\n").utf8)) == key)
        #expect(try AuditHMACKeyFile.parse(Array(hexString(key).uppercased().utf8)) == key)
        #expect(try AuditHMACKeyFile.parse(Array(Data(key).base64EncodedString().utf8)) == key)
        #expect(try AuditHMACKeyFile.parse(Array(Data(key).base64EncodedString().replacingOccurrences(of: "=", with: "").utf8)) == key)
        let raw = key.map { $0 | 0x80 }
        #expect(try AuditHMACKeyFile.parse(raw) == raw)
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.parse(Array(repeating: 1, count: 31)) }
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.parse([]) }
        // Text that is not a long enough hex/base64 key is refused, not taken as raw bytes.
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.parse(Array(hexString(key.prefix(20)).utf8)) }
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.parse(Array("this is my secret audit passphrase!!".utf8)) }
    }

    @Test func hmacKeyFileIsCreatedOnceWhenMissing() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/audit-hmac.key"
        let first = try AuditHMACKeyFile.loadOrCreate(path: path)
        #expect(first.count == 32 && fileMode(path) == 0o600)
        #expect(try AuditHMACKeyFile.loadOrCreate(path: path) == first)
        #expect(try AuditHMACKeyFile.load(path: path) == first)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["audit-hmac.key"])
    }

    @Test func hmacKeyFileMustBePrivate() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/hmac.key"
        _ = FileManager.default.createFile(atPath: path, contents: Data(hexString([UInt8](repeating: 9, count: 32)).utf8))
        chmod(path, 0o644)
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.load(path: path) }
        chmod(path, 0o600)
        #expect(try AuditHMACKeyFile.load(path: path) == [UInt8](repeating: 9, count: 32))
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.load(path: dir) }
        #expect(throws: AuditError.self) { try AuditHMACKeyFile.load(path: dir + "/missing") }
    }
}
