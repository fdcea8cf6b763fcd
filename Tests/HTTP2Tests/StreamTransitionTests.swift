import Testing
@testable import HTTP2

/// The §5.1 transitions of one stream, without a connection.
@Suite struct StreamTransitionTests {
    static func peerOpened(endStream: Bool = false) -> HTTP2Stream {
        let remote = HTTP2Stream.RemoteSide(headersReceived: true, expectedContentLength: 4)
        return HTTP2Stream(id: 1, state: endStream ? .halfClosedRemote(local: .awaitingHeaders)
                                                    : .open(local: .awaitingHeaders, remote: remote),
                           sendWindow: 100, recvWindow: 100)
    }

    @Test func requestThenAnswerClosesTheStream() {
        let stream = Self.peerOpened()
        #expect(!stream.answered)
        stream.updateRemote { $0.receivedDataBytes += 4 }
        #expect(stream.remote?.receivedDataBytes == 4)
        #expect(!stream.remoteEnded())
        #expect(stream.state == .halfClosedRemote(local: .awaitingHeaders))
        #expect(stream.remote == nil)
        #expect(stream.queueHeaders(endStream: false))
        #expect(stream.answered)
        #expect(stream.queueData(endStream: true))
        #expect(stream.state == .halfClosedRemote(local: .ending))
        #expect(!stream.queueData(endStream: false))   // nothing after END_STREAM is queued
        #expect(!stream.queueHeaders(endStream: true))
        #expect(stream.localEnded())
        #expect(stream.state == .closed)
    }

    @Test func answerBeforeTheRequestEndsKeepsTheRemoteSide() {
        let stream = Self.peerOpened()
        #expect(stream.queueHeaders(endStream: true))
        #expect(!stream.localEnded())
        #expect(stream.state == .halfClosedLocal(remote: .init(headersReceived: true, expectedContentLength: 4)))
        #expect(stream.remoteOpen)
        #expect(!stream.queueData(endStream: false))
        #expect(stream.remoteEnded())
        #expect(stream.state == .closed)
    }

    @Test func reservedClientStreamOpensWithItsHeaders() {
        let stream = HTTP2Stream(id: 1, state: .idle, sendWindow: 100, recvWindow: 100)
        #expect(!stream.remoteOpen)
        #expect(!stream.queueData(endStream: false))   // DATA before headers is refused
        #expect(stream.queueHeaders(endStream: false))
        #expect(stream.state == .open(local: .sending, remote: .init(headersReceived: false)))
        stream.updateRemote { $0.headersReceived = true }
        #expect(stream.remote?.headersReceived == true)
    }
}
