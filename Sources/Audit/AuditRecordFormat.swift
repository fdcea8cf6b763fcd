// The line format and the chain, shared by the writer and the verifier.
//
// A line is   BODY,"chain":"<64 hex>"}\n   where BODY is the record's JSON object without its closing brace:
//   {"seq":N[,"prev_chain":"<64 hex>"][,"dropped_before":K],"time":"…","op":"…","uid":…,"key_id":…,"backend":"…",
//    "outcome":"…"[,"message":"…"],"latency_us":N,"peer":{"pid":…,"uid":…,"gid":…}|null,"connection":N,"stream":N
//    [,"ciphertext_sha256":"<16 hex>"]
// chain(N) = HMAC-SHA256(hmacKey, chain(N-1) as 32 raw bytes || BODY || "}")   — i.e. over the exact bytes of the
// record serialised without its chain field. chain(0) is 32 zero bytes (the first record ever, seq 1).
// The first record written to every newly opened file carries prev_chain = chain(N-1), so each file (a rotated
// one, or one whose predecessors were deleted) verifies on its own, and the link between files is checked.
// Fields are always in this order; strings use JSONWriter's escaping (pure ASCII), so the bytes are deterministic.
import PeerIdentity
import Crypto
import FoundationEssentials
import Glibc
import JSON

enum AuditRecordFormat {
    static let chainSize = 32
    static let genesisChain = [UInt8](repeating: 0, count: chainSize)
    /// `,"chain":"` + 64 hex + `"}`
    static let chainSuffixLength = 10 + 2 * chainSize + 2

    // Caps on caller-supplied text so one line stays small (the raw :path and messages come from outside).
    static let maxOpScalars = 256
    static let maxIDScalars = 256
    static let maxMessageScalars = 1024
    static let maxShortScalars = 64

    /// The record's JSON object without its closing brace (see the format above).
    static func body(of event: AuditEvent, seq: UInt64, prevChain: [UInt8]?, droppedBefore: UInt64) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(512)
        var cache = BodyCache()
        appendBody(of: event, seq: seq, prevChain: prevChain, droppedBefore: droppedBefore, cache: &cache, to: &out)
        return out
    }

    /// What one record's body shares with the previous one, kept by the writer: the formatted second of its time,
    /// three fragments that repeat across consecutive records, and the digest context of the ciphertext hash.
    struct BodyCache {
        var time = RFC3339.SecondCache()
        let ciphertextDigest = SHA256Context()
        /// `","op":…,"uid":` (the quote closes the time).
        var op = CachedFragment<String>()
        /// `,"key_id":…,"backend":…,"outcome":…`: the same for most consecutive records (one key, one backend, OK).
        var result = CachedFragment<ResultKey>()
        /// `,"peer":{"pid":…,"uid":…,"gid":…}|null,"connection":N,"stream":`: the same for every record of a connection.
        var connection = CachedFragment<ConnectionKey>()
    }

    struct ResultKey: Equatable {
        var keyID: String?
        var backend: String
        var outcome: String
    }

    struct ConnectionKey: Equatable {
        var peer: PeerCredentials?
        var id: UInt64
    }

    /// Bytes built from a key and reused while consecutive records have the same key, so their strings and numbers
    /// are escaped and formatted once, not per record.
    struct CachedFragment<Key: Equatable> {
        private var key: Key?
        private var bytes: [UInt8] = []

        mutating func append(for key: Key, to out: inout [UInt8], build: (Key, inout [UInt8]) -> Void) {
            if key != self.key {
                bytes.removeAll(keepingCapacity: true)
                build(key, &bytes)
                self.key = key
            }
            out.append(contentsOf: bytes)
        }
    }

    private static func buildOp(_ op: String, _ out: inout [UInt8]) {
        JSONWriter.appendLiteral("\",\"op\":", to: &out)
        JSONWriter.appendString(op, maxScalars: maxOpScalars, to: &out)
        JSONWriter.appendLiteral(",\"uid\":", to: &out)
    }

    private static func buildResult(_ result: ResultKey, _ out: inout [UInt8]) {
        JSONWriter.appendLiteral(",\"key_id\":", to: &out)
        appendOptionalString(result.keyID, maxScalars: maxIDScalars, to: &out)
        JSONWriter.appendLiteral(",\"backend\":", to: &out)
        JSONWriter.appendString(result.backend, maxScalars: maxShortScalars, to: &out)
        JSONWriter.appendLiteral(",\"outcome\":", to: &out)
        JSONWriter.appendString(result.outcome, maxScalars: maxShortScalars, to: &out)
    }

    private static func buildConnection(_ connection: ConnectionKey, _ out: inout [UInt8]) {
        if let peer = connection.peer {
            JSONWriter.appendLiteral(",\"peer\":{\"pid\":", to: &out)
            JSONWriter.appendInteger(peer.pid, to: &out)
            JSONWriter.appendLiteral(",\"uid\":", to: &out)
            JSONWriter.appendInteger(peer.uid, to: &out)
            JSONWriter.appendLiteral(",\"gid\":", to: &out)
            JSONWriter.appendInteger(peer.gid, to: &out)
            JSONWriter.appendLiteral("}", to: &out)
        } else {
            JSONWriter.appendLiteral(",\"peer\":null", to: &out)
        }
        JSONWriter.appendLiteral(",\"connection\":", to: &out)
        JSONWriter.appendInteger(connection.id, to: &out)
        JSONWriter.appendLiteral(",\"stream\":", to: &out)
    }

    /// Each key is written with its punctuation in one literal; the fields in the order of the format above.
    static func appendBody(of event: borrowing AuditEvent, seq: UInt64, prevChain: [UInt8]?, droppedBefore: UInt64,
                           cache: inout BodyCache, to out: inout [UInt8]) {
        JSONWriter.appendLiteral("{\"seq\":", to: &out)
        JSONWriter.appendInteger(seq, to: &out)
        if let prevChain {
            JSONWriter.appendLiteral(",\"prev_chain\":", to: &out)
            JSONWriter.appendHex(prevChain, to: &out)
        }
        if droppedBefore > 0 {
            JSONWriter.appendLiteral(",\"dropped_before\":", to: &out)
            JSONWriter.appendInteger(droppedBefore, to: &out)
        }
        JSONWriter.appendLiteral(",\"time\":\"", to: &out)
        cache.time.append(event.time, to: &out)
        cache.op.append(for: event.op, to: &out, build: buildOp)
        appendOptionalString(event.uid, maxScalars: maxIDScalars, to: &out)
        cache.result.append(for: ResultKey(keyID: event.keyID, backend: event.backend, outcome: event.outcome), to: &out,
                            build: buildResult)
        if let message = event.message {
            JSONWriter.appendLiteral(",\"message\":", to: &out)
            JSONWriter.appendString(message, maxScalars: maxMessageScalars, to: &out)
        }
        JSONWriter.appendLiteral(",\"latency_us\":", to: &out)
        JSONWriter.appendInteger(event.latencyMicros, to: &out)
        cache.connection.append(for: ConnectionKey(peer: event.peer, id: event.connection), to: &out, build: buildConnection)
        JSONWriter.appendInteger(event.stream, to: &out)
        if let ciphertext = event.ciphertext {
            JSONWriter.appendLiteral(",\"ciphertext_sha256\":", to: &out)
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: SHA256.size) { digest in
                cache.ciphertextDigest.hash(ciphertext, into: digest.baseAddress!)
                JSONWriter.appendHex(UnsafeBufferPointer(rebasing: digest[..<8]), to: &out)
            }
        }
    }

    private static func appendOptionalString(_ s: String?, maxScalars: Int, to out: inout [UInt8]) {
        if let s { JSONWriter.appendString(s, maxScalars: maxScalars, to: &out) } else { JSONWriter.appendLiteral("null", to: &out) }
    }

    private static let closingBrace: [UInt8] = [0x7D]

    /// chain(N) with a key context set up once (the writer's path: no joined copy of the message).
    static func chain(_ mac: HMACSHA256Context, previous: [UInt8], body: ArraySlice<UInt8>) -> [UInt8] {
        mac.mac(previous[...], body, closingBrace[...])
    }

    static func chain(key: [UInt8], previous: [UInt8], body: some Collection<UInt8>) -> [UInt8] {
        var message = previous
        message.reserveCapacity(previous.count + body.count + 1)
        message.append(contentsOf: body)
        message.append(0x7D)
        return HMACSHA256.mac(key: key, message: message)
    }

    /// The full line: body + chain field + "}\n".
    static func appendLine(body: [UInt8], chain: [UInt8], to out: inout [UInt8]) {
        out.append(contentsOf: body)
        appendChainSuffix(chain, to: &out)
    }

    /// The chain field, the closing brace and the newline that end a line after its body.
    static func appendChainSuffix(_ chain: [UInt8], to out: inout [UInt8]) {
        JSONWriter.appendLiteral(",\"chain\":\"", to: &out)
        JSONWriter.appendHexDigits(chain, to: &out)
        JSONWriter.appendLiteral("\"}\n", to: &out)
    }
}

/// The chain fields of one line, as found by `AuditLineParser`. Only seq/prev_chain/dropped_before are read
/// structurally; the rest of the body is covered by the MAC.
struct ParsedAuditLine: Equatable {
    var seq: UInt64
    var prevChain: [UInt8]?
    var droppedBefore: UInt64
    var chain: [UInt8]
    /// BODY: the record without its chain field and closing brace (the MAC covers BODY + "}").
    var body: ArraySlice<UInt8>
}

/// Reads the chain fields of a line without trusting anything in it: any byte sequence yields a value or nil,
/// never a trap.
enum AuditLineParser {
    static func parse(_ line: ArraySlice<UInt8>) -> ParsedAuditLine? {
        let suffix = AuditRecordFormat.chainSuffixLength
        guard line.count > suffix + 8 else { return nil }
        let bodyEnd = line.endIndex - suffix
        guard line[bodyEnd..<(bodyEnd + 10)].elementsEqual(",\"chain\":\"".utf8),
              line[(line.endIndex - 2)...].elementsEqual("\"}".utf8),
              let chain = LowercaseHex.decode(line[(bodyEnd + 10)..<(line.endIndex - 2)], count: AuditRecordFormat.chainSize)
        else { return nil }
        let body = line[line.startIndex..<bodyEnd]
        var cursor = body.startIndex
        guard consume("{\"seq\":", body, &cursor), let seq = unsignedInteger(body, &cursor) else { return nil }
        var prevChain: [UInt8]? = nil
        if consume(",\"prev_chain\":\"", body, &cursor) {
            let end = cursor + 2 * AuditRecordFormat.chainSize
            guard end < body.endIndex, body[end] == 0x22,
                  let value = LowercaseHex.decode(body[cursor..<end], count: AuditRecordFormat.chainSize)
            else { return nil }
            prevChain = value
            cursor = end + 1
        }
        var dropped: UInt64 = 0
        if consume(",\"dropped_before\":", body, &cursor) {
            guard let value = unsignedInteger(body, &cursor) else { return nil }
            dropped = value
        }
        guard consume(",\"time\":", body, &cursor) else { return nil }
        return ParsedAuditLine(seq: seq, prevChain: prevChain, droppedBefore: dropped, chain: chain, body: body)
    }

    private static func consume(_ literal: String, _ bytes: ArraySlice<UInt8>, _ cursor: inout Int) -> Bool {
        let lit = literal.utf8
        guard bytes.endIndex - cursor >= lit.count, bytes[cursor..<(cursor + lit.count)].elementsEqual(lit) else { return false }
        cursor += lit.count
        return true
    }

    /// 1–20 decimal digits without a leading zero (except "0"), no overflow.
    private static func unsignedInteger(_ bytes: ArraySlice<UInt8>, _ cursor: inout Int) -> UInt64? {
        let start = cursor
        var value: UInt64 = 0
        while cursor < bytes.endIndex, bytes[cursor] >= 0x30, bytes[cursor] <= 0x39 {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(bytes[cursor] - 0x30))
            guard !o1, !o2 else { return nil }
            value = s
            cursor += 1
        }
        let count = cursor - start
        guard count > 0, !(count > 1 && bytes[start] == 0x30) else { return nil }
        return value
    }
}
