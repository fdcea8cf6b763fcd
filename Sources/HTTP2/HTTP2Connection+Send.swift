// The send side: headers, DATA released by flow control fairly across streams, resets, pings and GOAWAY.
import HPACK

extension HTTP2Connection {
    /// Response headers (server), request headers (client, on an id from `openStream()`), or trailers with
    /// `endStream: true`. Trailers queued behind blocked DATA keep their place. Unknown or finished streams are ignored.
    public func sendHeaders(streamID: UInt32, fields: [HeaderField], endStream: Bool) {
        guard let stream = streamAcceptingHeaders(streamID, endStream: endStream) else { return }
        if stream.pending.isEmpty {
            writeHeaders(stream, fields, endStream: endStream)
        } else {
            stream.pending.append(PendingOutbound(bytes: [], fields: fields, endStream: endStream))
        }
    }

    /// The same for a block encoded once (a server's fixed response headers and trailers).
    public func sendHeaders(streamID: UInt32, preEncoded headers: PreEncodedHeaders, endStream: Bool) {
        guard let stream = streamAcceptingHeaders(streamID, endStream: endStream) else { return }
        writeHeaders(stream, preEncoded: headers, endStream: endStream)
    }

    /// A whole response (server): headers, one DATA payload and trailers, all blocks encoded once. The usual answer
    /// (nothing queued on the stream, the payload within one frame and both windows) is written with one stream
    /// lookup and no copy of `data` but into the output; otherwise it takes the general path. False when the stream
    /// is gone or can no longer send headers.
    @discardableResult
    public func sendResponse(streamID: UInt32, headers: PreEncodedHeaders, data: ArraySlice<UInt8>,
                             trailers: PreEncodedHeaders) -> Bool {
        guard !isClosed, let stream = streams[streamID] else { return false }
        guard stream.pending.isEmpty, data.count <= min(sendFrameSize, stream.sendWindow, connectionSendWindow) else {
            guard stream.queueHeaders(endStream: false) else { return false }
            writeHeaders(stream, preEncoded: headers, endStream: false)
            sendData(streamID: streamID, bytes: Array(data), endStream: false)
            sendHeaders(streamID: streamID, preEncoded: trailers, endStream: true)
            return true
        }
        guard stream.queueHeaders(endStream: false) else { return false }
        writeHeaders(stream, preEncoded: headers, endStream: false)
        if stream.queueData(endStream: false) { writeData(stream, data, endStream: false) }
        if stream.queueHeaders(endStream: true) { writeHeaders(stream, preEncoded: trailers, endStream: true) }
        return true
    }

    private func writeHeaders(_ stream: HTTP2Stream, preEncoded headers: PreEncodedHeaders, endStream: Bool) {
        if stream.pending.isEmpty {
            // In wire order: after its first use on the connection the block is a few dynamic-table indices.
            if let block = encoder.readyBlock(for: headers) {
                FrameWriter.appendHeaderBlock(into: &output, streamID: stream.id, block: block[...], endStream: endStream,
                                              maxFrameSize: sendFrameSize)
            } else {
                headerScratch.removeAll(keepingCapacity: true)
                encoder.encode(headers, into: &headerScratch)
                FrameWriter.appendHeaderBlock(into: &output, streamID: stream.id, block: headerScratch[...],
                                              endStream: endStream, maxFrameSize: sendFrameSize)
            }
            if endStream { closeLocal(stream) }
        } else {
            stream.pending.append(PendingOutbound(bytes: [], fields: headers.fields, endStream: endStream))
        }
    }

    private func streamAcceptingHeaders(_ streamID: UInt32, endStream: Bool) -> HTTP2Stream? {
        guard !isClosed, let stream = streams[streamID], stream.queueHeaders(endStream: endStream) else { return nil }
        return stream
    }

    /// Queues DATA; frames go out as the stream and connection windows allow, at most the peer's MAX_FRAME_SIZE
    /// (never above 16384), END_STREAM on the last one. More than `maxQueuedOutputBytes` blocked → connection error
    /// ENHANCE_YOUR_CALM (`didFail` turns true; the event comes with the next `receive`).
    public func sendData(streamID: UInt32, bytes: [UInt8], endStream: Bool) {
        guard !isClosed, !bytes.isEmpty || endStream, let stream = streams[streamID],
              stream.queueData(endStream: endStream) else { return }
        // Fast path: nothing queued and the whole payload fits in one frame and both windows.
        if stream.pending.isEmpty && bytes.count <= min(sendFrameSize, stream.sendWindow, connectionSendWindow) {
            writeData(stream, bytes[...], endStream: endStream)
            return
        }
        stream.pending.append(PendingOutbound(bytes: bytes, fields: nil, endStream: endStream))
        queuedDataBytes += bytes.count
        if !stream.inSendQueue {
            stream.inSendQueue = true
            sendQueue.append(streamID)
        }
        flushSendQueue()
        if let overrun = budgets.queuedOutput(bytes: queuedDataBytes) { fail(overrun, &deferredEvents) }
    }

    /// Sends RST_STREAM and forgets the stream; late frames from the peer for it are ignored (§5.1 closed).
    public func resetStream(streamID: UInt32, code: HTTP2ErrorCode) {
        guard !isClosed, let stream = streams[streamID] else { return }
        FrameWriter.appendRstStream(into: &output, streamID: streamID, code: code)
        removeStream(stream)
        closedQuietly.insert(streamID)
    }

    // MARK: - Credit on consumption (`HTTP2Limits.creditOnConsumption`)

    /// DATA payload delivered and not yet consumed, over all streams (0 unless `creditOnConsumption`).
    public var bufferedInboundBytes: Int { connectionBuffered }

    /// The owner is done with `bytes` bytes of payload delivered on `streamID`: their credit goes back to the
    /// peer (batched). Ignored unless `creditOnConsumption`; bytes of a gone stream were already credited.
    public func consume(streamID: UInt32, bytes: Int) {
        guard limits.creditOnConsumption, !isClosed, bytes > 0, let stream = streams[streamID] else { return }
        let n = min(bytes, stream.buffered)
        stream.buffered -= n
        connectionBuffered -= n
        replenishStreamWindow(stream)
        replenishConnectionWindow()
    }

    /// Raises the stream's receive window so the peer may send `bytes` more bytes on it, whatever it holds: e.g.
    /// the rest of a message whose declared length is within the owner's limit, which would otherwise never
    /// complete. The connection window still applies.
    public func allowReceiving(streamID: UInt32, bytes: Int) {
        guard !isClosed, let stream = streams[streamID], stream.remoteOpen else { return }
        let wanted = min(bytes, HTTP2Constants.maxWindowSize)
        guard wanted > stream.recvWindow else { return }
        FrameWriter.appendWindowUpdate(into: &output, streamID: streamID, increment: UInt32(wanted - stream.recvWindow))
        stream.recvWindow = wanted
    }

    /// Restores the stream window to `initialWindowSize` minus what the stream holds, once that is worth a frame
    /// (half the target), and never past what the peer may still send (nothing after END_STREAM).
    func replenishStreamWindow(_ stream: HTTP2Stream) {
        guard stream.remoteOpen else { return }
        let increment = max(0, streamWindowTarget - stream.buffered) - stream.recvWindow
        guard increment > 0, increment >= streamWindowTarget / 2 else { return }
        FrameWriter.appendWindowUpdate(into: &output, streamID: stream.id, increment: UInt32(increment))
        stream.recvWindow += increment
    }

    /// Restores the connection window to its target minus what all streams hold. Batched at half the target, but
    /// once the window is below half everything consumed goes back at once, so withheld credit can never be what
    /// stalls the peer.
    func replenishConnectionWindow() {
        guard limits.creditOnConsumption, !isClosed else { return }
        let increment = connectionWindowTarget - connectionBuffered - connectionRecvWindow
        guard increment > 0,
              increment >= connectionWindowTarget / 2 || connectionRecvWindow < connectionWindowTarget / 2 else { return }
        FrameWriter.appendWindowUpdate(into: &output, streamID: 0, increment: UInt32(increment))
        connectionRecvWindow += increment
    }

    // MARK: - Request timeout (`HTTP2Limits.requestTimeoutNanos`)

    /// When the oldest peer-opened stream still receiving its request times out (nil: none, or no timeout).
    public var nextRequestDeadline: UInt64? {
        guard limits.requestTimeoutNanos > 0 else { return nil }
        var earliest: UInt64?
        for stream in streams.values where isPeerInitiated(stream.id) && stream.remoteOpen {
            let deadline = stream.openedAt &+ limits.requestTimeoutNanos
            if earliest.map({ deadline < $0 }) ?? true { earliest = deadline }
        }
        return earliest
    }

    /// Resets with RST_STREAM(CANCEL) every peer-opened stream whose request (remote side) is not complete
    /// `requestTimeoutNanos` after it opened; reports each as `.streamError`. Streams already answered or waiting
    /// for our answer are left alone.
    public func expireIncompleteStreams(now: UInt64) -> [HTTP2Event] {
        guard limits.requestTimeoutNanos > 0, !isClosed else { return [] }
        let expired = streams.values.filter {
            isPeerInitiated($0.id) && $0.remoteOpen && now >= $0.openedAt &+ limits.requestTimeoutNanos
        }.map(\.id).sorted()
        let reason = "request not complete within \(limits.requestTimeoutNanos / 1_000_000) ms"
        return expired.map { id in
            resetStream(streamID: id, code: .cancel)
            return .streamError(streamID: id, code: .cancel, reason: reason)
        }
    }

    /// Client role: reserves the next odd stream id; send its headers before opening another (ids must appear in
    /// increasing order). nil in the server role, after GOAWAY, when ids run out, or at the peer's
    /// MAX_CONCURRENT_STREAMS (counting streams already reserved).
    public func openStream() -> UInt32? {
        guard role == .client, !isDraining, nextLocalStreamID <= UInt32(Int32.max),
              streams.count < peerMaxConcurrentStreams else { return nil }
        let id = nextLocalStreamID
        nextLocalStreamID += 2
        streams[id] = HTTP2Stream(id: id, state: .idle, sendWindow: peerInitialWindowSize, recvWindow: streamWindowTarget)
        return id
    }

    public func ping(opaque: UInt64) {
        guard !isClosed else { return }
        FrameWriter.appendPing(into: &output, opaque: opaque, ack: false)
    }

    /// First call: GOAWAY(2^31-1, NO_ERROR) — streams in flight still arrive. Second call: GOAWAY(last processed
    /// stream, NO_ERROR); newer streams are then ignored. Existing streams finish normally.
    public func beginGracefulShutdown() {
        guard !isClosed else { return }
        switch goAwaySent {
        case .none:
            writeGoAway(lastStreamID: UInt32(Int32.max), code: .noError, debug: "")
            recordGoAwaySent(.graceful)
        case .graceful:
            goAway(code: .noError, debug: "")
        case .final:
            break
        }
    }

    /// The final GOAWAY naming the last stream we processed; streams above it are ignored from now on.
    public func goAway(code: HTTP2ErrorCode, debug: String) {
        guard !isClosed else { return }
        if case .final = goAwaySent { return }
        writeGoAway(lastStreamID: lastProcessedPeerStreamID, code: code, debug: debug)
        recordGoAwaySent(.final(lastStreamID: lastProcessedPeerStreamID))
    }

    private func recordGoAwaySent(_ sent: GoAwaySent) {
        switch phase {
        case .open: phase = .goingAway(GoAway(sent: sent, receivedLastStreamID: nil))
        case var .goingAway(goAway): goAway.sent = sent; phase = .goingAway(goAway)
        case .closed: break
        }
    }

    // MARK: - Writing

    func writeHeaders(_ stream: HTTP2Stream, _ fields: [HeaderField], endStream: Bool) {
        // Encoded at write time, so header blocks hit the wire in the order the HPACK encoder saw them.
        headerScratch.removeAll(keepingCapacity: true)
        encoder.encode(fields, into: &headerScratch)
        FrameWriter.appendHeaderBlock(into: &output, streamID: stream.id, block: headerScratch[...],
                                      endStream: endStream, maxFrameSize: sendFrameSize)
        if endStream { closeLocal(stream) }
    }

    private func writeData(_ stream: HTTP2Stream, _ bytes: ArraySlice<UInt8>, endStream: Bool) {
        FrameWriter.appendData(into: &output, streamID: stream.id, bytes: bytes, endStream: endStream)
        stream.sendWindow -= bytes.count
        connectionSendWindow -= bytes.count
        if endStream { closeLocal(stream) }
    }

    /// Writes the next frame of `stream`'s queue if the windows allow; false if it is blocked.
    private func writeNextChunk(_ stream: HTTP2Stream) -> Bool {
        guard let head = stream.pending.first else { return false }
        if let fields = head.fields {
            stream.pending.removeFirst()
            writeHeaders(stream, fields, endStream: head.endStream)
            return true
        }
        let remaining = head.bytes.count - stream.pendingOffset
        let n = min(remaining, stream.sendWindow, connectionSendWindow, sendFrameSize)
        guard n > 0 || remaining == 0 else { return false }
        let last = n == remaining
        let start = stream.pendingOffset
        if last {
            stream.pending.removeFirst()
            stream.pendingOffset = 0
        } else {
            stream.pendingOffset += n
        }
        queuedDataBytes -= n
        writeData(stream, head.bytes[start..<(start + n)], endStream: last && head.endStream)
        return true
    }

    /// Round-robin over streams with queued output, one frame per stream per round, until all are blocked or done.
    func flushSendQueue() {
        var progress = true
        while progress && !sendQueue.isEmpty {
            progress = false
            var stillQueued: [UInt32] = []
            for id in sendQueue {
                guard let stream = streams[id] else { continue }
                if writeNextChunk(stream) { progress = true }
                if stream.pending.isEmpty || streams[id] == nil {
                    stream.inSendQueue = false
                } else if stream.sendWindow <= 0 && stream.pending.first?.fields == nil
                            && (stream.pending.first?.bytes.count ?? 0) > stream.pendingOffset {
                    stream.inSendQueue = false   // parked until a WINDOW_UPDATE or SETTINGS re-queues it
                } else {
                    stillQueued.append(id)
                }
            }
            sendQueue = stillQueued
        }
    }
}
