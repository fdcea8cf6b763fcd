// libFuzzer harness for the Vault client's HTTP/1.1 response parser (scripts/fuzz vault-http SECONDS):
// `HTTPResponseParser.parse` on arbitrary bytes, as the client calls it on its receive buffer.
//
// Input: one configuration octet, then the bytes the server sent (possibly several pipelined responses).
// Configuration octet:
//   bit 0:    atEOF (the server closed after these bytes)
//   bit 1:    the request was HEAD
//   bit 2:    small limits (128 header bytes, 4 headers, 64 body bytes) so the limit paths are reachable
//   bits 3-7: where to cut the buffer for the split check below
//
// Beyond "never crash": a complete response consumed 1...count bytes, has a final (non-1xx) status, lowercase header
// names, a body within the limit and none where none is allowed; at EOF the parser never asks for more. Split
// independence, as the client reads whatever the socket gives: when a response completes in `consumed` bytes, the
// first `consumed` bytes alone give the same response (with or without EOF), and a shorter prefix asks for more.
// Responses are parsed one after another from a slice that does not start at index 0, as the client's buffer does.
// Resumption, as the client parses its growing buffer: the first part of the bytes and then all of them, with one
// HTTPParseProgress, give exactly what a parse of all of them from scratch gives.
import HTTPClient

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("vault-http fuzz invariant: \(message())") }
}

func parse(_ bytes: ArraySlice<UInt8>, atEOF: Bool, head: Bool, limits: HTTPParserLimits) -> Result<HTTPParseOutcome, HTTPParseError> {
    do throws(HTTPParseError) {
        return .success(try HTTPResponseParser.parse(bytes, atEOF: atEOF, requestWasHEAD: head, limits: limits))
    } catch {
        return .failure(error)
    }
}

func parseResumed(_ bytes: ArraySlice<UInt8>, cut: Int, atEOF: Bool, head: Bool, limits: HTTPParserLimits) -> Result<HTTPParseOutcome, HTTPParseError> {
    var progress = HTTPParseProgress()
    do throws(HTTPParseError) {
        let first = try HTTPResponseParser.parse(bytes.prefix(cut), atEOF: false, requestWasHEAD: head, limits: limits, progress: &progress)
        if first != .needMore { return .success(first) }
        return .success(try HTTPResponseParser.parse(bytes, atEOF: atEOF, requestWasHEAD: head, limits: limits, progress: &progress))
    } catch {
        return .failure(error)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVaultHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let config = data[0]
    let atEOF = config & 1 != 0
    let head = config & 2 != 0
    var limits = HTTPParserLimits()
    if config & 4 != 0 {
        limits.maxHeaderBytes = 128
        limits.maxHeaderCount = 4
        limits.maxBodyBytes = 64
    }
    let buffer = Array(UnsafeBufferPointer(start: data, count: size))  // index 0 (the config octet) is not input
    var start = 1
    for _ in 0..<8 where start < buffer.count {
        let pending = buffer[start...]
        let outcome = parse(pending, atEOF: atEOF, head: head, limits: limits)
        let resumeCut = Int(config >> 3) * pending.count / 32
        check(parseResumed(pending, cut: resumeCut, atEOF: atEOF, head: head, limits: limits) == outcome,
              "resumed after \(resumeCut) of \(pending.count) bytes: \(parseResumed(pending, cut: resumeCut, atEOF: atEOF, head: head, limits: limits)) vs \(outcome)")
        guard case .success(let result) = outcome else { return 0 }
        guard case .complete(let response, let consumed) = result else {
            check(!atEOF, "needMore at EOF")
            return 0
        }
        check(consumed >= 1 && consumed <= pending.count, "consumed \(consumed) of \(pending.count)")
        check((200...999).contains(response.status), "status \(response.status)")
        check(response.body.count <= limits.maxBodyBytes, "body of \(response.body.count) bytes")
        if head || response.status == 204 || response.status == 304 { check(response.body.isEmpty, "body where none is allowed") }
        check(response.headers.allSatisfy { !$0.name.isEmpty && $0.name == $0.name.lowercased() }, "header names")

        let exact = pending.prefix(consumed)
        if !atEOF {
            check(parse(exact, atEOF: false, head: head, limits: limits) == outcome, "the response's own bytes parse differently")
            check(parse(exact, atEOF: true, head: head, limits: limits) == outcome, "the response's own bytes parse differently at EOF")
            let cut = Int(config >> 3) * consumed / 32
            check(parse(pending.prefix(cut), atEOF: false, head: head, limits: limits) == .success(.needMore),
                  "the first \(cut) of \(consumed) bytes do not ask for more: \(parse(pending.prefix(cut), atEOF: false, head: head, limits: limits))")
        }
        guard response.keepAlive else { return 0 }
        start += consumed
    }
    return 0
}
