// A strict, bounded HTTP/1.1 response parser. Pure: bytes in, a response (or "need more") out. The client keeps an
// `HTTPParseProgress` between calls, so each call resumes where the last one stopped (a response arriving in n
// pieces costs O(total bytes), not O(n × bytes)); without one, each call parses from the start, which is what the
// fuzzer checks the resumed parse against.

public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var reason: String
    /// Header names lowercased, in arrival order.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// False when the server asked to close (or HTTP/1.0 without keep-alive, or a body delimited by EOF).
    public var keepAlive: Bool

    public init(status: Int, reason: String = "", headers: [(name: String, value: String)] = [], body: [UInt8] = [], keepAlive: Bool = true) {
        self.status = status; self.reason = reason; self.headers = headers; self.body = body; self.keepAlive = keepAlive
    }

    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name == lower }?.value
    }

    public static func == (a: HTTPResponse, b: HTTPResponse) -> Bool {
        a.status == b.status && a.reason == b.reason && a.body == b.body && a.keepAlive == b.keepAlive
            && a.headers.map { $0.name } == b.headers.map { $0.name } && a.headers.map { $0.value } == b.headers.map { $0.value }
    }
}

public enum HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformedStatusLine
    case malformedHeader
    case headersTooLarge
    case tooManyHeaders
    case invalidContentLength
    case conflictingFraming
    case unsupportedTransferEncoding
    case malformedChunk
    case bodyTooLarge
    case tooManyChunks
    case truncated

    public var description: String {
        switch self {
        case .malformedStatusLine: return "malformed HTTP status line"
        case .malformedHeader: return "malformed HTTP header"
        case .headersTooLarge: return "HTTP response headers too large"
        case .tooManyHeaders: return "too many HTTP response headers"
        case .invalidContentLength: return "invalid Content-Length"
        case .conflictingFraming: return "conflicting Content-Length/Transfer-Encoding"
        case .unsupportedTransferEncoding: return "unsupported Transfer-Encoding"
        case .malformedChunk: return "malformed chunked body"
        case .bodyTooLarge: return "HTTP response body too large"
        case .tooManyChunks: return "HTTP response body in too many tiny chunks"
        case .truncated: return "HTTP response truncated"
        }
    }
}

public struct HTTPParserLimits: Sendable {
    public var maxHeaderBytes = 16 * 1024
    public var maxHeaderCount = 100
    /// Vault replies kekd asks for are a few KiB (a 128-item batch decrypt is ~15 KiB); callers reading pages of
    /// objects (etcd ranges, Kubernetes lists) raise it.
    public var maxBodyBytes = 1024 * 1024
    public init() {}
}

/// Where a parse of a growing buffer stopped, so the next call on the same (appended-to) buffer resumes there.
/// Indices are the buffer's own; the buffer may only grow at its end between calls.
public struct HTTPParseProgress: Sendable {
    fileprivate var start: Int?
    fileprivate var headerScanned: Int?
    fileprivate var head: HTTPResponseParser.ParsedHead?
    fileprivate var chunkNext: Int?
    fileprivate var chunkBody: [UInt8] = []
    fileprivate var chunks = 0
    fileprivate var inTrailers = false
    fileprivate var trailerBytes = 0
    public init() {}

    /// Wipes the body bytes collected so far (replies can carry key material).
    public mutating func wipeBody() {
        chunkBody.withUnsafeMutableBufferPointer { buffer in
            for i in buffer.indices { buffer[i] = 0 }
        }
        chunkBody = []
    }
}

public enum HTTPParseOutcome: Sendable, Equatable {
    case needMore
    /// `consumed` bytes of the buffer belong to this response (the rest starts the next one).
    case complete(HTTPResponse, consumed: Int)
}

public enum HTTPResponseParser {
    private static let cr: UInt8 = 13, lf: UInt8 = 10

    /// Parses one response from the start of `buffer`. `atEOF`: the peer closed, so an EOF-delimited body ends here
    /// and anything incomplete is `.truncated`. `requestWasHEAD` suppresses the body.
    public static func parse(_ buffer: ArraySlice<UInt8>, atEOF: Bool, requestWasHEAD: Bool = false,
                             limits: HTTPParserLimits = .init()) throws(HTTPParseError) -> HTTPParseOutcome {
        var progress = HTTPParseProgress()
        defer { progress.wipeBody() }
        return try parse(buffer, atEOF: atEOF, requestWasHEAD: requestWasHEAD, limits: limits, progress: &progress)
    }

    /// Parses on from where `progress` says the previous call on this buffer stopped.
    public static func parse(_ buffer: ArraySlice<UInt8>, atEOF: Bool, requestWasHEAD: Bool = false,
                             limits: HTTPParserLimits = .init(),
                             progress: inout HTTPParseProgress) throws(HTTPParseError) -> HTTPParseOutcome {
        // Interim 1xx responses (100 Continue) carry no body: skip them.
        while true {
            let start = progress.start ?? buffer.startIndex
            if progress.head == nil {
                // Resume the search for CRLFCRLF where the last one stopped (3 bytes back: it may straddle the cut).
                let from = max(start, (progress.headerScanned ?? start) - 3)
                guard let headEnd = findHeaderEnd(buffer, start: start, from: from, limit: limits.maxHeaderBytes) else {
                    progress.headerScanned = buffer.endIndex
                    // Too large only once the whole window (limit + CRLFCRLF) was searched: earlier, the terminator may
                    // still arrive, and the outcome must not depend on how the socket split the bytes.
                    if buffer.endIndex - start >= limits.maxHeaderBytes + 4 { throw .headersTooLarge }
                    if atEOF { throw .truncated }
                    return .needMore
                }
                let head = try parseHead(buffer[start..<headEnd.lineEnd], limits: limits)
                let bodyStart = headEnd.bodyStart
                if (100...199).contains(head.status) {
                    if head.status == 101 { throw .malformedStatusLine }  // we never ask to upgrade
                    progress = HTTPParseProgress()
                    progress.start = bodyStart
                    continue
                }
                let noBody = requestWasHEAD || head.status == 204 || head.status == 304
                if noBody {
                    return .complete(head.response(body: []), consumed: bodyStart - buffer.startIndex)
                }
                progress.head = ParsedHead(head: head, bodyStart: bodyStart, framing: try framing(of: head))
            }
            guard let parsed = progress.head else { return .needMore }
            var head = parsed.head
            let bodyStart = parsed.bodyStart
            switch parsed.framing {
            case .chunked:
                guard let end = try parseChunked(buffer, from: bodyStart, atEOF: atEOF, limits: limits, progress: &progress) else { return .needMore }
                let body = progress.chunkBody
                progress.wipeBody()
                return .complete(head.response(body: body), consumed: end - buffer.startIndex)
            case .length(let n):
                guard n <= limits.maxBodyBytes else { throw .bodyTooLarge }
                let available = buffer.endIndex - bodyStart
                if available < n {
                    if atEOF { throw .truncated }
                    return .needMore
                }
                return .complete(head.response(body: Array(buffer[bodyStart..<(bodyStart + n)])), consumed: bodyStart + n - buffer.startIndex)
            case .untilClose:
                let available = buffer.endIndex - bodyStart
                guard available <= limits.maxBodyBytes else { throw .bodyTooLarge }
                if !atEOF { return .needMore }
                head.keepAlive = false
                return .complete(head.response(body: Array(buffer[bodyStart...])), consumed: buffer.endIndex - buffer.startIndex)
            }
        }
    }

    fileprivate struct ParsedHead: Sendable {
        var head: Head
        var bodyStart: Int
        var framing: Framing
    }

    fileprivate struct Head: Sendable {
        var status: Int
        var reason: String
        var headers: [(name: String, value: String)]
        var keepAlive: Bool
        func response(body: [UInt8]) -> HTTPResponse {
            HTTPResponse(status: status, reason: reason, headers: headers, body: body, keepAlive: keepAlive)
        }
    }

    fileprivate enum Framing: Sendable { case chunked, length(Int), untilClose }

    /// Index of the CR of the blank line's preceding line end, and where the body starts. The header block begins
    /// at `start`; the search begins at `from` (where an earlier search on a shorter buffer left off).
    private static func findHeaderEnd(_ b: ArraySlice<UInt8>, start: Int, from: Int, limit: Int) -> (lineEnd: Int, bodyStart: Int)? {
        var i = from
        let end = min(b.endIndex, start + limit + 4)
        while i + 3 < end {
            if b[i] == cr && b[i + 1] == lf && b[i + 2] == cr && b[i + 3] == lf { return (i, i + 4) }
            i += 1
        }
        return nil
    }

    private static func parseHead(_ bytes: ArraySlice<UInt8>, limits: HTTPParserLimits) throws(HTTPParseError) -> Head {
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = bytes.startIndex
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == cr {
                guard i + 1 < bytes.endIndex, bytes[i + 1] == lf else { throw .malformedHeader }
                lines.append(bytes[lineStart..<i])
                i += 2
                lineStart = i
                continue
            }
            if bytes[i] == lf || bytes[i] == 0 { throw .malformedHeader }
            i += 1
        }
        lines.append(bytes[lineStart..<bytes.endIndex])
        guard let statusLine = lines.first else { throw .malformedStatusLine }
        let (version11, status, reason) = try parseStatusLine(statusLine)
        guard lines.count - 1 <= limits.maxHeaderCount else { throw .tooManyHeaders }
        var headers: [(name: String, value: String)] = []
        var connectionTokens: [String] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else { throw .malformedHeader }
            let nameBytes = line[line.startIndex..<colon]
            guard nameBytes.allSatisfy(isTokenByte) else { throw .malformedHeader }  // also rejects obs-fold
            var valueBytes = line[(colon + 1)...]
            while let f = valueBytes.first, f == 32 || f == 9 { valueBytes = valueBytes.dropFirst() }
            while let l = valueBytes.last, l == 32 || l == 9 { valueBytes = valueBytes.dropLast() }
            guard valueBytes.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else { throw .malformedHeader }
            let name = String(decoding: nameBytes, as: UTF8.self).lowercased()
            let value = String(decoding: valueBytes, as: UTF8.self)
            if name == "connection" { connectionTokens += value.lowercased().split(separator: ",").map { $0.trimmingSpaces() } }
            headers.append((name, value))
        }
        let keepAlive = version11 ? !connectionTokens.contains("close") : connectionTokens.contains("keep-alive")
        return Head(status: status, reason: reason, headers: headers, keepAlive: keepAlive)
    }

    private static func parseStatusLine(_ line: ArraySlice<UInt8>) throws(HTTPParseError) -> (Bool, Int, String) {
        // HTTP/1.x SP 3DIGIT SP reason
        let prefix = Array("HTTP/1.".utf8)
        guard line.count >= 12, line.prefix(7).elementsEqual(prefix) else { throw .malformedStatusLine }
        let b = Array(line)
        guard b[7] == UInt8(ascii: "1") || b[7] == UInt8(ascii: "0"), b[8] == 32 else { throw .malformedStatusLine }
        var status = 0
        for k in 9..<12 {
            guard b[k] >= 48 && b[k] <= 57 else { throw .malformedStatusLine }
            status = status * 10 + Int(b[k] - 48)
        }
        guard status >= 100 else { throw .malformedStatusLine }
        if b.count > 12 && b[12] != 32 { throw .malformedStatusLine }
        let reason = b.count > 13 ? String(decoding: b[13...], as: UTF8.self) : ""
        return (b[7] == UInt8(ascii: "1"), status, reason)
    }

    private static func framing(of head: Head) throws(HTTPParseError) -> Framing {
        let te = head.headers.filter { $0.name == "transfer-encoding" }.map { $0.value }
        let cl = head.headers.filter { $0.name == "content-length" }.map { $0.value }
        if !te.isEmpty {
            // RFC 9112 6.3: both present is a smuggling signal; we refuse it.
            guard cl.isEmpty else { throw .conflictingFraming }
            let codings = te.joined(separator: ",").lowercased().split(separator: ",").map { $0.trimmingSpaces() }
            guard codings == ["chunked"] else { throw .unsupportedTransferEncoding }
            return .chunked
        }
        if !cl.isEmpty {
            var value: Int? = nil
            for field in cl {
                for part in field.split(separator: ",", omittingEmptySubsequences: false) {
                    guard let n = parseDecimal(part.trimmingSpaces()) else { throw .invalidContentLength }
                    if let v = value, v != n { throw .invalidContentLength }
                    value = n
                }
            }
            guard let n = value else { throw .invalidContentLength }
            return .length(n)
        }
        return .untilClose
    }

    /// Non-negative decimal without sign, at most 15 digits (no overflow possible).
    public static func parseDecimal(_ s: String) -> Int? {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 15, u.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return u.reduce(0) { $0 * 10 + Int($1 - 48) }
    }

    /// A body of more than this many chunks must average `minAverageChunkBytes` per chunk: 1-byte chunks cost a
    /// line parse per byte and say the server is broken or hostile.
    static let freeChunks = 1024
    static let minAverageChunkBytes = 64

    /// The end of the chunked body, or nil when more bytes are needed. Resumes at the chunk `progress` stopped
    /// before, with the body collected so far in `progress.chunkBody`.
    private static func parseChunked(_ b: ArraySlice<UInt8>, from bodyStart: Int, atEOF: Bool, limits: HTTPParserLimits,
                                     progress: inout HTTPParseProgress) throws(HTTPParseError) -> Int? {
        var i = progress.chunkNext ?? bodyStart
        let maxLineLength = 1024
        func need() throws(HTTPParseError) -> Int? { if atEOF { throw .truncated }; return nil }
        defer { progress.chunkNext = i }
        while !progress.inTrailers {
            // chunk-size [; ext] CRLF
            guard let lineEnd = findCRLF(b, from: i, maxLength: maxLineLength) else {
                if b.endIndex - i >= maxLineLength + 2 { throw .malformedChunk }  // whole window searched (see findCRLF)
                return try need()
            }
            let line = b[i..<lineEnd]
            let sizePart = line.prefix { $0 != UInt8(ascii: ";") && $0 != 32 && $0 != 9 }
            guard !sizePart.isEmpty, sizePart.count <= 8 else { throw .malformedChunk }
            var size = 0
            for c in sizePart {
                guard let d = hexValue(c) else { throw .malformedChunk }
                size = size * 16 + d
            }
            guard line[(line.startIndex + sizePart.count)...].allSatisfy({ $0 >= 32 || $0 == 9 }) else { throw .malformedChunk }
            if size == 0 {
                i = lineEnd + 2
                progress.inTrailers = true
                break
            }
            guard progress.chunkBody.count + size <= limits.maxBodyBytes else { throw .bodyTooLarge }
            guard b.endIndex - (lineEnd + 2) >= size + 2 else { return try need() }  // resume at this size line
            let data = lineEnd + 2
            guard b[data + size] == cr, b[data + size + 1] == lf else { throw .malformedChunk }
            progress.chunkBody.append(contentsOf: b[data..<(data + size)])
            progress.chunks += 1
            if progress.chunks > freeChunks && progress.chunkBody.count < progress.chunks * minAverageChunkBytes { throw .tooManyChunks }
            i = data + size + 2
        }
        // Trailer section: header lines until an empty line; contents ignored.
        while true {
            guard let tEnd = findCRLF(b, from: i, maxLength: limits.maxHeaderBytes) else {
                if b.endIndex - i > limits.maxHeaderBytes { throw .headersTooLarge }
                return try need()
            }
            let isEmpty = tEnd == i
            progress.trailerBytes += tEnd - i + 2
            guard progress.trailerBytes <= limits.maxHeaderBytes else { throw .headersTooLarge }
            i = tEnd + 2
            if isEmpty { return i }
        }
    }

    private static func findCRLF(_ b: ArraySlice<UInt8>, from start: Int, maxLength: Int) -> Int? {
        var i = start
        let end = min(b.endIndex - 1, start + maxLength + 1)
        while i < end {
            if b[i] == cr { return b[i + 1] == lf ? i : nil }
            i += 1
        }
        return nil
    }

    private static func hexValue(_ c: UInt8) -> Int? {
        switch c {
        case 48...57: return Int(c - 48)
        case 65...70: return Int(c - 55)
        case 97...102: return Int(c - 87)
        default: return nil
        }
    }

    private static func isTokenByte(_ c: UInt8) -> Bool {
        switch c {
        case 48...57, 65...90, 97...122: return true
        default: return Array("!#$%&'*+-.^_`|~".utf8).contains(c)
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional white space).
    public func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
