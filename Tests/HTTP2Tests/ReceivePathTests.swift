import HPACK
import Testing
@testable import HTTP2

@Suite struct StreamIDMapTests {
    /// Random inserts, updates and removals (ids crowding a few slots, growth, wrap-around) agree with a Dictionary.
    @Test func agreesWithDictionary() {
        var map = StreamIDMap<Int>()
        var model: [UInt32: Int] = [:]
        var generator = SystemRandomNumberGenerator()
        for step in 0..<20_000 {
            // Ids 1...97 (some sharing a home slot), with a run of sequential odd ids as peers open them.
            let id = step % 3 == 0 ? UInt32(2 * (step / 3 % 40) + 1) : UInt32.random(in: 1...97, using: &generator)
            switch Int.random(in: 0..<5, using: &generator) {
            case 0, 1:
                map[id] = step
                model[id] = step
            case 2:
                #expect(map.removeValue(forKey: id) == model.removeValue(forKey: id))
            case 3:
                // Removed only when the condition holds for the value.
                let expected = model[id].flatMap { $0 % 2 == 0 ? model.removeValue(forKey: id) : nil }
                #expect(map.removeValue(forKey: id, if: { $0 % 2 == 0 }) == expected)
            default:
                map[id]? += 1   // in place through the optional
                model[id]? += 1
            }
            #expect(map.count == model.count)
            if step % 97 == 0 {
                for probe in UInt32(0)...100 where map[probe] != model[probe] {
                    Issue.record("id \(probe): \(String(describing: map[probe])) != \(String(describing: model[probe]))")
                }
                #expect(Set(map.ids) == Set(model.keys))
                #expect(map.values.sorted() == model.values.sorted())
            }
        }
        map.removeAll()
        #expect(map.isEmpty && map[1] == nil && !map.contains(1))
    }

    /// The recent-stream set keeps exactly the last `capacity` ids inserted (re-inserting a member changes nothing).
    @Test func recentStreamSetForgetsTheOldest() {
        var recent = RecentStreamSet(capacity: 4)
        for id: UInt32 in [1, 3, 5, 3, 7, 9, 11] { recent.insert(id) }
        #expect([1, 3].allSatisfy { !recent.contains($0) })
        #expect([5, 7, 9, 11].allSatisfy { recent.contains($0) })
    }
}

@Suite struct CachedFieldClassTests {
    /// A malformed field that entered the HPACK dynamic table is still malformed when a later request refers to it
    /// by index (its class is cached with the table entry, not skipped).
    @Test func malformedFieldSentAsIndexIsStillRejected() {
        let server = handshakenServer()
        var client = FakeClient()
        let fields = FakeClient.requestFields + [HeaderField(name: "x-note", value: "ends with space ")]
        for id: UInt32 in [1, 3] {
            let block = client.block(fields)
            if id == 3 {
                // The second block refers to the field by its dynamic-table index (one octet, high bit set).
                #expect(block.count == fields.count)
            }
            let frame = Frame(streamID: id, payload: .headers(block: block[...], endStream: true, endHeaders: true,
                                                              priority: nil, padding: nil))
            let events = server.feed(frame.serialized())
            #expect(isStreamError(events, id, .protocolError))
            #expect(events.contains { if case .streamError(_, _, "field value ends with whitespace") = $0 { true } else { false } })
        }
        // A well-formed request still passes on the same connection.
        let events = server.feed(client.headers(5, endStream: true))
        #expect(events.contains { if case .headers(5, _, true) = $0 { true } else { false } })
    }

    @Test func classesOfNames() {
        let cases: [(String, String, FieldClass.Name, Bool)] = [
            (":method", "POST", .method, false), (":path", "/a", .path, false), (":status", "200", .status, false),
            (":scheme", "http", .scheme, false), (":authority", "x", .authority, false),
            (":bogus", "x", .unknownPseudo, false), ("te", "trailers", .te, false),
            ("connection", "close", .connectionSpecific, false), ("upgrade", "h2c", .connectionSpecific, false),
            ("content-length", "3", .contentLength, false), ("content-type", "application/grpc", .contentType, false),
            ("grpc-timeout", "1S", .other, false), ("X-Upper", "v", .other, true), ("", "v", .other, true),
            ("a:b", "v", .other, true), ("ok", "nul\u{0}", .other, true), ("ok", " lead", .other, true),
            (":path", "bad\r\n", .path, true),
        ]
        for (name, value, expected, malformed) in cases {
            let fieldClass = FieldClass(HeaderField(name: name, value: value))
            #expect(fieldClass.name == expected, "\(name)")
            #expect(fieldClass.isMalformed == malformed, "\(name): \(value)")
        }
    }
}
