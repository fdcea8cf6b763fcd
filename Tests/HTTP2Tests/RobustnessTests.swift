import HPACK
import Testing
@testable import HTTP2

/// SplitMix64: a small seeded generator so failures reproduce.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

@Suite struct RobustnessTests {
    /// Random frames (plausible lengths, any type/flags/stream, valid header blocks now and then) must never trap,
    /// and every connection error must leave a GOAWAY as the last thing written.
    @Test func randomFrameSequencesNeverCrash() {
        var rng = SeededGenerator(state: 0x6b65_6b64)
        var connectionErrors = 0
        for _ in 0..<400 {
            var client = FakeClient()
            let server = handshakenServer()
            var input: [UInt8] = []
            for _ in 0..<30 {
                let type = UInt8.random(in: 0...10, using: &rng)
                let flags = UInt8.random(in: 0...255, using: &rng)
                let stream = UInt32.random(in: 0...9, using: &rng)
                var payload: [UInt8]
                if type == 1 && Bool.random(using: &rng) {
                    payload = client.block()
                } else {
                    let lengths = [0, 1, 4, 5, 6, 8, 12, Int.random(in: 0...300, using: &rng)]
                    let length = lengths[Int.random(in: 0..<lengths.count, using: &rng)]
                    payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
                FrameWriter.appendHeader(into: &input, length: payload.count, type: type, flags: flags, streamID: stream)
                input += payload
            }
            var events: [HTTP2Event] = []
            var output: [UInt8] = []
            var offset = 0
            while offset < input.count {
                let end = min(input.count, offset + Int.random(in: 1...64, using: &rng))
                events += server.receive(input[offset..<end])
                output += server.takeOutput()
                // The owner may answer streams at any time.
                for event in events {
                    if case let .headers(id, _, _) = event {
                        server.sendHeaders(streamID: id, fields: okStatus, endStream: false)
                        server.sendData(streamID: id, bytes: [1, 2, 3], endStream: true)
                    }
                }
                offset = end
            }
            output += server.takeOutput()
            if events.contains(where: { if case .connectionError = $0 { true } else { false } }) {
                connectionErrors += 1
                let frames = parseFrames(output)
                #expect(goAwayCode(frames) != nil)
                #expect(server.isDraining && server.didFail)
            }
        }
        #expect(connectionErrors > 100)   // the generator does produce violations
    }
}
