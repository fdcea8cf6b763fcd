// Frame handlers: stream states (§5.1), header blocks (§4.3, §6.2, §6.10), settings (§6.5), flow control in (§6.9).
import HPACK

extension HTTP2Connection {
    func process(_ frame: Frame, _ events: inout [HTTP2Event]) {
        if handshake != .done {
            guard case .settings(_, ack: false) = frame.payload else {
                fail(.protocolError, "first frame is not SETTINGS", &events)
                return
            }
        }
        if let block = headerBlock {
            guard case .continuation = frame.payload, frame.streamID == block.streamID else {
                fail(.protocolError, "frame interleaved in a header block", &events)
                return
            }
        }
        switch frame.payload {
        case let .data(bytes, endStream, padding):
            handleData(frame.streamID, bytes, endStream: endStream,
                       flowControlled: bytes.count + (padding.map { $0 + 1 } ?? 0), &events)
        case let .headers(block, endStream, endHeaders, priority, _):
            if let overrun = budgets.headerBlock(bytes: block.count, continuations: 0) {
                fail(overrun, &events)
                return
            }
            if endHeaders {
                handleHeaderBlock(frame.streamID, block, endStream: endStream, priority: priority, &events)
            } else {
                if block.isEmpty { countEmptyFrame(&events) }
                headerBlock = HeaderBlockInProgress(streamID: frame.streamID, endStream: endStream, priority: priority,
                                                    block: Array(block), continuationCount: 0)
            }
        case let .continuation(fragment, endHeaders):
            handleContinuation(fragment, endHeaders: endHeaders, &events)
        case let .priority(info):
            countEmptyFrame(&events)
            if info.dependency == frame.streamID {
                streamError(frame.streamID, .protocolError, "stream depends on itself",
                            surface: streams[frame.streamID] != nil, &events)
            }
        case let .rstStream(code):
            handleRstStream(frame.streamID, code, &events)
        case let .settings(settings, ack):
            if ack {
                if unackedSettings > 0 {
                    unackedSettings -= 1
                    if !ourSettingsAcked {
                        ourSettingsAcked = true
                        decoder.setMaxTableSizeLimit(limits.headerTableSize)
                    }
                    events.append(.settingsAcked)
                }
            } else {
                applySettings(settings, &events)
            }
        case .pushPromise:
            fail(.protocolError, role == .server ? "PUSH_PROMISE from a client" : "PUSH_PROMISE with push disabled",
                 &events)
        case let .ping(opaque, ack):
            if ack {
                events.append(.pingAck(opaque: opaque))
            } else {
                FrameWriter.appendPing(into: &output, opaque: opaque, ack: true)
                countControlFrame(&events)
            }
        case let .goAway(lastStreamID, code, _):
            handleGoAway(lastStreamID, code, &events)
        case let .windowUpdate(increment):
            handleWindowUpdate(frame.streamID, increment, &events)
        case .unknown:
            countEmptyFrame(&events)
        }
    }

    // MARK: - Header blocks

    private func handleContinuation(_ fragment: ArraySlice<UInt8>, endHeaders: Bool, _ events: inout [HTTP2Event]) {
        guard var block = headerBlock else {
            fail(.protocolError, "CONTINUATION without a header block", &events)
            return
        }
        block.continuationCount += 1
        if let overrun = budgets.headerBlock(bytes: block.block.count + fragment.count,
                                             continuations: block.continuationCount) {
            fail(overrun, &events)
            return
        }
        if fragment.isEmpty && !endHeaders {
            countEmptyFrame(&events)
            if isClosed { return }
        }
        headerBlock = nil   // release the stored copy before appending, so the buffer is uniquely referenced
        block.block.append(contentsOf: fragment)
        if endHeaders {
            handleHeaderBlock(block.streamID, block.block[...], endStream: block.endStream, priority: block.priority, &events)
        } else {
            headerBlock = block
        }
    }

    private func handleHeaderBlock(_ id: UInt32, _ block: ArraySlice<UInt8>, endStream: Bool, priority: PriorityInfo?,
                                   _ events: inout [HTTP2Event]) {
        // Decode first, whatever happens to the stream: the HPACK dynamic table must stay in step with the peer.
        let fields: [HeaderField]
        do {
            fields = try decoder.decode(block)
        } catch .headerListTooLarge {
            // The block was fully decoded (the table is in sync): only this stream fails (§10.5.1).
            rejectOversizedHeaderList(id, &events)
            return
        } catch {
            fail(.compressionError, "\(error)", &events)
            return
        }
        if role == .client {
            handleResponseHeaders(id, fields, endStream: endStream, &events)
            return
        }
        guard isPeerInitiated(id) else {
            fail(.protocolError, "HEADERS on even stream \(id)", &events)
            return
        }
        if let stream = streams[id] {
            handleTrailers(stream, fields, endStream: endStream, &events)
            return
        }
        if id <= highestPeerStreamID {
            if recentlyClosed.contains(id) && !closedQuietly.contains(id) {
                fail(.streamClosed, "HEADERS on closed stream \(id)", &events)
            } else if !closedQuietly.contains(id) {
                fail(.protocolError, "stream id \(id) is not above the last one (\(highestPeerStreamID))", &events)
            }
            return
        }
        highestPeerStreamID = id
        if case let .final(lastStreamID) = goAwaySent, id > lastStreamID {
            closedQuietly.insert(id)   // §6.8: streams above our final GOAWAY are not processed
            return
        }
        if let priority, priority.dependency == id {
            streamError(id, .protocolError, "stream depends on itself", surface: true, &events)
            return
        }
        if streams.count >= limits.maxConcurrentStreams {
            streamError(id, .refusedStream, "too many concurrent streams", surface: true, &events)
            return
        }
        let contentLength: Int?
        do {
            contentLength = try HeaderValidation.validate(fields, kind: .request)
        } catch {
            streamError(id, .protocolError, error.reason, surface: true, &events)
            return
        }
        if endStream, let contentLength, contentLength != 0 {
            streamError(id, .protocolError, "content-length does not match DATA", surface: true, &events)
            return
        }
        let remote = HTTP2Stream.RemoteSide(headersReceived: true, expectedContentLength: contentLength)
        let stream = HTTP2Stream(id: id, state: endStream ? .halfClosedRemote(local: .awaitingHeaders)
                                                          : .open(local: .awaitingHeaders, remote: remote),
                                 sendWindow: peerInitialWindowSize, recvWindow: streamWindowTarget)
        stream.openSequence = budgets.peerStreamOpened()
        stream.openedAt = budgets.now
        streams[id] = stream
        lastProcessedPeerStreamID = id
        budgets.progress()
        events.append(.headers(streamID: id, fields: fields, endStream: endStream))
    }

    /// A header list over SETTINGS_MAX_HEADER_LIST_SIZE: RST_STREAM(ENHANCE_YOUR_CALM), which gRPC clients report as
    /// RESOURCE_EXHAUSTED. Stream-id rules still apply.
    private func rejectOversizedHeaderList(_ id: UInt32, _ events: inout [HTTP2Event]) {
        let reason = "header list larger than \(limits.maxHeaderListSize) bytes"
        if streams[id] != nil {
            streamError(id, .enhanceYourCalm, reason, surface: true, &events)
        } else if role == .server && isPeerInitiated(id) && id > highestPeerStreamID {
            highestPeerStreamID = id
            streamError(id, .enhanceYourCalm, reason, surface: true, &events)
        } else if isIdle(id) || (role == .server && !isPeerInitiated(id)) {
            fail(.protocolError, "HEADERS on idle stream \(id)", &events)
        }
    }

    /// HEADERS after the initial block on a peer-opened stream: trailers, which must end the stream (§8.1).
    private func handleTrailers(_ stream: HTTP2Stream, _ fields: [HeaderField], endStream: Bool,
                                _ events: inout [HTTP2Event]) {
        guard let remote = stream.remote else {
            streamError(stream.id, .streamClosed, "HEADERS after END_STREAM", surface: true, &events)
            return
        }
        guard endStream else {
            streamError(stream.id, .protocolError, "trailers without END_STREAM", surface: true, &events)
            return
        }
        do {
            _ = try HeaderValidation.validate(fields, kind: .trailers)
        } catch {
            streamError(stream.id, .protocolError, error.reason, surface: true, &events)
            return
        }
        if let expected = remote.expectedContentLength, expected != remote.receivedDataBytes {
            streamError(stream.id, .protocolError, "content-length does not match DATA", surface: true, &events)
            return
        }
        closeRemote(stream)
        events.append(.headers(streamID: stream.id, fields: fields, endStream: true))
    }

    /// Client role: response headers or trailers on a stream we opened.
    private func handleResponseHeaders(_ id: UInt32, _ fields: [HeaderField], endStream: Bool,
                                       _ events: inout [HTTP2Event]) {
        guard !isPeerInitiated(id) else {
            fail(.protocolError, "HEADERS on a stream the server may not open", &events)
            return
        }
        guard let stream = streams[id] else {
            if isIdle(id) {
                fail(.protocolError, "HEADERS on idle stream \(id)", &events)
            } else if !closedQuietly.contains(id) {
                fail(.streamClosed, "HEADERS on closed stream \(id)", &events)
            }
            return
        }
        guard stream.state != .idle else {
            fail(.protocolError, "HEADERS on idle stream \(id)", &events)
            return
        }
        guard let remote = stream.remote else {
            streamError(id, .streamClosed, "HEADERS after END_STREAM", surface: true, &events)
            return
        }
        if remote.headersReceived {
            handleTrailers(stream, fields, endStream: endStream, &events)
            return
        }
        let contentLength: Int?
        do {
            contentLength = try HeaderValidation.validate(fields, kind: .response)
        } catch {
            streamError(id, .protocolError, error.reason, surface: true, &events)
            return
        }
        if let status = fields.first?.value, status.utf8.first == UInt8(ascii: "1") {
            // Informational (1xx) response: not surfaced; the final response follows (§8.1).
            if endStream { streamError(id, .protocolError, "1xx response with END_STREAM", surface: true, &events) }
            return
        }
        stream.updateRemote {
            $0.headersReceived = true
            $0.expectedContentLength = contentLength
        }
        if endStream { closeRemote(stream) }
        events.append(.headers(streamID: id, fields: fields, endStream: endStream))
    }

    // MARK: - DATA and flow control in

    private func handleData(_ id: UInt32, _ bytes: [UInt8], endStream: Bool, flowControlled: Int,
                            _ events: inout [HTTP2Event]) {
        // Connection-level accounting applies even to frames for streams we no longer track (§6.9).
        guard flowControlled <= connectionRecvWindow else {
            fail(.flowControlError, "DATA exceeds the connection window", &events)
            return
        }
        connectionRecvWindow -= flowControlled
        // With creditOnConsumption the connection window is replenished from `connectionBuffered` instead (at the
        // end of `receive`, on `consume`, and when a stream goes away).
        if !limits.creditOnConsumption {
            connectionRecvUnreturned += flowControlled
        }
        if connectionRecvUnreturned >= connectionWindowTarget / 2 {
            FrameWriter.appendWindowUpdate(into: &output, streamID: 0, increment: UInt32(connectionRecvUnreturned))
            connectionRecvWindow += connectionRecvUnreturned
            connectionRecvUnreturned = 0
        }
        if bytes.isEmpty && !endStream {
            countEmptyFrame(&events)
            if isClosed { return }
        } else if !bytes.isEmpty {
            budgets.progress()
        }
        guard let stream = streams[id] else {
            if isIdle(id) {
                fail(.protocolError, "DATA on idle stream \(id)", &events)
            } else if !closedQuietly.contains(id) {
                streamError(id, .streamClosed, "DATA on closed stream", surface: false, &events)
            }
            return
        }
        guard stream.state != .idle else {
            fail(.protocolError, "DATA on idle stream \(id)", &events)
            return
        }
        guard let remote = stream.remote else {
            streamError(id, .streamClosed, "DATA after END_STREAM", surface: true, &events)
            return
        }
        guard remote.headersReceived else {
            streamError(id, .protocolError, "DATA before response headers", surface: true, &events)
            return
        }
        guard flowControlled <= stream.recvWindow else {
            streamError(id, .flowControlError, "DATA exceeds the stream window", surface: true, &events)
            return
        }
        stream.recvWindow -= flowControlled
        let received = remote.receivedDataBytes + bytes.count
        stream.updateRemote { $0.receivedDataBytes = received }
        if let expected = remote.expectedContentLength, received > expected || (endStream && received != expected) {
            streamError(id, .protocolError, "content-length does not match DATA", surface: true, &events)
            return
        }
        if limits.creditOnConsumption {
            // The payload is held until the owner consumes it; padding is credited back at once.
            stream.buffered += bytes.count
            connectionBuffered += bytes.count
            if endStream { closeRemote(stream) } else { replenishStreamWindow(stream) }
        } else if endStream {
            closeRemote(stream)
        } else {
            stream.recvUnreturned += flowControlled
            if stream.recvUnreturned >= streamWindowTarget / 2 {
                FrameWriter.appendWindowUpdate(into: &output, streamID: id, increment: UInt32(stream.recvUnreturned))
                stream.recvWindow += stream.recvUnreturned
                stream.recvUnreturned = 0
            }
        }
        events.append(.data(streamID: id, bytes: bytes, endStream: endStream))
    }

    private func handleWindowUpdate(_ id: UInt32, _ increment: UInt32, _ events: inout [HTTP2Event]) {
        let delta = Int(increment)
        if id == 0 {
            guard delta > 0 else {
                fail(.protocolError, "WINDOW_UPDATE with increment 0", &events)
                return
            }
            guard connectionSendWindow + delta <= HTTP2Constants.maxWindowSize else {
                fail(.flowControlError, "connection window overflow", &events)
                return
            }
            connectionSendWindow += delta
            return
        }
        guard let stream = streams[id] else {
            if isIdle(id) { fail(.protocolError, "WINDOW_UPDATE on idle stream \(id)", &events) }
            return   // closed: §6.9 says ignore
        }
        guard delta > 0 else {
            streamError(id, .protocolError, "WINDOW_UPDATE with increment 0", surface: true, &events)
            return
        }
        guard stream.sendWindow + delta <= HTTP2Constants.maxWindowSize else {
            streamError(id, .flowControlError, "stream window overflow", surface: true, &events)
            return
        }
        stream.sendWindow += delta
        if !stream.pending.isEmpty && !stream.inSendQueue {
            stream.inSendQueue = true
            sendQueue.append(id)
        }
    }

    private func handleRstStream(_ id: UInt32, _ code: HTTP2ErrorCode, _ events: inout [HTTP2Event]) {
        guard let stream = streams[id], stream.state != .idle else {
            if isIdle(id) || streams[id] != nil { fail(.protocolError, "RST_STREAM on idle stream \(id)", &events) }
            return   // closed: late RST_STREAM is fine
        }
        let answered = stream.answered
        removeStream(stream)
        events.append(.streamReset(streamID: id, code: code))
        if isPeerInitiated(id), let overrun = budgets.peerReset(sequence: stream.openSequence,
                                                                 openedAt: stream.openedAt, answered: answered) {
            fail(overrun, &events)
        }
    }

    private func handleGoAway(_ lastStreamID: UInt32, _ code: HTTP2ErrorCode, _ events: inout [HTTP2Event]) {
        switch phase {
        case .open:
            phase = .goingAway(GoAway(sent: .none, receivedLastStreamID: lastStreamID))
        case var .goingAway(goAway):
            goAway.receivedLastStreamID = min(lastStreamID, goAway.receivedLastStreamID ?? lastStreamID)
            phase = .goingAway(goAway)
        case .closed:
            return
        }
        events.append(.goAwayReceived(lastStreamID: lastStreamID, code: code))
        // Our streams above lastStreamID were not processed by the peer (§6.8): report them as refused.
        let refused = streams.values.filter { !isPeerInitiated($0.id) && $0.id > lastStreamID }.sorted { $0.id < $1.id }
        for stream in refused {
            removeStream(stream)
            events.append(.streamReset(streamID: stream.id, code: .refusedStream))
        }
    }

    private func applySettings(_ settings: [HTTP2Setting], _ events: inout [HTTP2Event]) {
        for setting in settings {
            switch setting.id {
            case HTTP2Setting.headerTableSize:
                encoder.setMaxTableSize(min(Int(setting.value), limits.maxEncoderTableSize, 4096))
            case HTTP2Setting.enablePush:
                guard setting.value <= 1 else { return fail(.protocolError, "ENABLE_PUSH not 0 or 1", &events) }
                if role == .client && setting.value == 1 {
                    return fail(.protocolError, "server sent ENABLE_PUSH=1", &events)
                }
            case HTTP2Setting.maxConcurrentStreams:
                peerMaxConcurrentStreams = Int(setting.value)
            case HTTP2Setting.initialWindowSize:
                let value = Int(setting.value)
                guard value <= HTTP2Constants.maxWindowSize else {
                    return fail(.flowControlError, "INITIAL_WINDOW_SIZE above 2^31-1", &events)
                }
                let delta = value - peerInitialWindowSize
                peerInitialWindowSize = value
                for stream in streams.values {
                    stream.sendWindow += delta
                    guard stream.sendWindow <= HTTP2Constants.maxWindowSize else {
                        return fail(.flowControlError, "INITIAL_WINDOW_SIZE overflows a stream window", &events)
                    }
                    if delta > 0 && !stream.pending.isEmpty && !stream.inSendQueue {
                        stream.inSendQueue = true
                        sendQueue.append(stream.id)
                    }
                }
            case HTTP2Setting.maxFrameSize:
                let value = Int(setting.value)
                guard value >= HTTP2Constants.defaultMaxFrameSize && value <= HTTP2Constants.maxAllowedFrameSize else {
                    return fail(.protocolError, "MAX_FRAME_SIZE out of range", &events)
                }
                peerMaxFrameSize = value
            default:
                break   // MAX_HEADER_LIST_SIZE is advisory; unknown ids are ignored (§6.5.2)
            }
        }
        handshake = .done
        FrameWriter.appendSettings(into: &output, [], ack: true)
        countControlFrame(&events)
    }
}
