import Testing
@testable import HTTP2

@Suite struct FrameCodecTests {
    static let samples: [Frame] = [
        Frame(streamID: 1, payload: .data(bytes: [1, 2, 3], endStream: true, padding: nil)),
        Frame(streamID: 3, payload: .data(bytes: [9, 9], endStream: false, padding: 4)),
        Frame(streamID: 5, payload: .headers(block: [0x82, 0x86], endStream: false, endHeaders: true,
                                             priority: nil, padding: nil)),
        Frame(streamID: 7, payload: .headers(block: [0x82], endStream: true, endHeaders: false,
                                             priority: PriorityInfo(exclusive: true, dependency: 3, weight: 200),
                                             padding: 2)),
        Frame(streamID: 9, payload: .priority(PriorityInfo(exclusive: false, dependency: 1, weight: 16))),
        Frame(streamID: 11, payload: .rstStream(.cancel)),
        Frame(streamID: 0, payload: .settings([HTTP2Setting(id: 3, value: 100), HTTP2Setting(id: 0xfe03, value: 1)],
                                              ack: false)),
        Frame(streamID: 0, payload: .settings([], ack: true)),
        Frame(streamID: 1, payload: .pushPromise(promisedStreamID: 2, block: [0x82], endHeaders: true, padding: 1)),
        Frame(streamID: 0, payload: .ping(opaque: 0x0204_1010_090e_0707, ack: false)),
        Frame(streamID: 0, payload: .ping(opaque: 42, ack: true)),
        Frame(streamID: 0, payload: .goAway(lastStreamID: 0x7fff_ffff, code: .enhanceYourCalm, debugData: Array("x".utf8))),
        Frame(streamID: 0, payload: .windowUpdate(increment: 65535)),
        Frame(streamID: 13, payload: .windowUpdate(increment: 0x7fff_ffff)),
        Frame(streamID: 7, payload: .continuation(block: [0x84], endHeaders: true)),
        Frame(streamID: 1, payload: .unknown(type: 0xfa, flags: 0x3, payload: [7, 7])),
    ]

    @Test(arguments: samples) func roundTrip(_ frame: Frame) throws {
        var reader = FrameReader()
        reader.append(frame.serialized()[...])
        #expect(try reader.nextFrame() == frame)
        #expect(try reader.nextFrame() == nil)
        #expect(reader.bufferedByteCount == 0)
    }

    @Test func byteByByteEqualsWhole() throws {
        var all: [UInt8] = []
        for frame in Self.samples { frame.serialize(into: &all) }
        var reader = FrameReader()
        var frames: [Frame] = []
        for byte in all {
            reader.append([byte][...])
            while let frame = try reader.nextFrame() { frames.append(frame) }
        }
        #expect(frames == Self.samples)
    }

    @Test func headerLayoutIsBigEndian() {
        let bytes = Frame(streamID: 0x0102_0304, payload: .rstStream(.refusedStream)).serialized()
        #expect(bytes == [0, 0, 4, 3, 0, 1, 2, 3, 4, 0, 0, 0, 7])
    }

    static func raw(length: Int, type: UInt8, flags: UInt8 = 0, stream: UInt32, payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        FrameWriter.appendHeader(into: &out, length: length, type: type, flags: flags, streamID: stream)
        return out + payload
    }

    struct Malformed: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var expected: FrameError
        var testDescription: String { name }
    }

    static let malformed: [Malformed] = [
        Malformed(name: "oversized frame", bytes: raw(length: 16385, type: 0, stream: 1, payload: []),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "SETTINGS not multiple of 6", bytes: raw(length: 5, type: 4, stream: 0, payload: [0, 1, 0, 0, 0]),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "SETTINGS ACK with payload",
                  bytes: raw(length: 6, type: 4, flags: 1, stream: 0, payload: [0, 1, 0, 0, 0, 0]),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "SETTINGS on stream", bytes: raw(length: 0, type: 4, stream: 1, payload: []),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "PING length 7", bytes: raw(length: 7, type: 6, stream: 0, payload: Array(repeating: 0, count: 7)),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "PING on stream", bytes: raw(length: 8, type: 6, stream: 1, payload: Array(repeating: 0, count: 8)),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "WINDOW_UPDATE length 3", bytes: raw(length: 3, type: 8, stream: 0, payload: [0, 0, 1]),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "RST_STREAM length 3", bytes: raw(length: 3, type: 3, stream: 1, payload: [0, 0, 1]),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "RST_STREAM on stream 0", bytes: raw(length: 4, type: 3, stream: 0, payload: [0, 0, 0, 1]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "PRIORITY length 4", bytes: raw(length: 4, type: 2, stream: 3, payload: [0, 0, 0, 1]),
                  expected: .stream(3, .frameSizeError, "")),
        Malformed(name: "PRIORITY on stream 0", bytes: raw(length: 5, type: 2, stream: 0, payload: [0, 0, 0, 1, 0]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "GOAWAY length 7", bytes: raw(length: 7, type: 7, stream: 0, payload: Array(repeating: 0, count: 7)),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "GOAWAY on stream", bytes: raw(length: 8, type: 7, stream: 1, payload: Array(repeating: 0, count: 8)),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "DATA on stream 0", bytes: raw(length: 1, type: 0, stream: 0, payload: [1]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "HEADERS on stream 0", bytes: raw(length: 1, type: 1, flags: 4, stream: 0, payload: [0x82]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "CONTINUATION on stream 0", bytes: raw(length: 1, type: 9, flags: 4, stream: 0, payload: [0x82]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "DATA padding = payload", bytes: raw(length: 3, type: 0, flags: 8, stream: 1, payload: [3, 0, 0]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "DATA padded, empty", bytes: raw(length: 0, type: 0, flags: 8, stream: 1, payload: []),
                  expected: .connection(.frameSizeError, "")),
        Malformed(name: "HEADERS padding too long",
                  bytes: raw(length: 3, type: 1, flags: 0xc, stream: 1, payload: [5, 0x82, 0]),
                  expected: .connection(.protocolError, "")),
        Malformed(name: "HEADERS priority too short",
                  bytes: raw(length: 3, type: 1, flags: 0x24, stream: 1, payload: [0, 0, 0]),
                  expected: .connection(.frameSizeError, "")),
    ]

    @Test(arguments: malformed) func rejectsMalformed(_ testCase: Malformed) {
        var reader = FrameReader()
        reader.append(testCase.bytes[...])
        do {
            let frame = try reader.nextFrame()
            Issue.record("expected \(testCase.expected), got \(String(describing: frame))")
        } catch {
            switch (error, testCase.expected) {
            case let (.connection(code, _), .connection(expected, _)): #expect(code == expected)
            case let (.stream(id, code, _), .stream(expectedID, expected, _)):
                #expect(id == expectedID)
                #expect(code == expected)
            default: Issue.record("got \(error), expected \(testCase.expected)")
            }
        }
    }

    @Test func oversizedFrameIsRejectedFromItsHeaderAlone() {
        var reader = FrameReader()
        reader.append(Self.raw(length: 1 << 20, type: 0, stream: 1, payload: [])[...])
        #expect(throws: FrameError.self) { try reader.nextFrame() }
    }

    @Test func partialFrameWaits() throws {
        let bytes = Frame(streamID: 1, payload: .data(bytes: Array(repeating: 1, count: 100), endStream: false,
                                                      padding: nil)).serialized()
        var reader = FrameReader()
        reader.append(bytes[0..<50])
        #expect(try reader.nextFrame() == nil)
        reader.append(bytes[50...])
        #expect(try reader.nextFrame() != nil)
    }

    @Test func paddingIsStripped() throws {
        var reader = FrameReader()
        reader.append(Self.raw(length: 6, type: 0, flags: 9, stream: 1, payload: [2, 0xaa, 0xbb, 0xcc, 0, 0])[...])
        #expect(try reader.nextFrame()?.payload == .data(bytes: [0xaa, 0xbb, 0xcc], endStream: true, padding: 2))
    }

    @Test func headerBlockSplitsIntoContinuations() throws {
        var out: [UInt8] = []
        let block = (0..<40000).map { UInt8(truncatingIfNeeded: $0) }
        FrameWriter.appendHeaderBlock(into: &out, streamID: 5, block: block[...], endStream: true, maxFrameSize: 16384)
        let frames = parseFrames(out)
        #expect(frames.count == 3)
        guard frames.count == 3 else { return }
        guard case let .headers(b0, true, false, nil, nil) = frames[0].payload,
              case let .continuation(b1, false) = frames[1].payload,
              case let .continuation(b2, true) = frames[2].payload else {
            Issue.record("unexpected frames \(frames)")
            return
        }
        #expect(b0.count == 16384 && b1.count == 16384)
        #expect(Array(b0) + Array(b1) + Array(b2) == block)
    }
}
