// Vault's HTTP API: JSON requests, retries with backoff + jitter, the circuit breaker, and the status-code → error
// mapping. Authentication is layered on top by `TokenManager`.
import Crypto
import FoundationEssentials
import JSON
import Locking
import Glibc
import GRPCCodes
import KMS

/// A Vault reply: status and decoded JSON object (empty for 204 or a non-JSON body).
struct VaultReply: Sendable {
    var status: Int
    var json: JSONValue

    var data: JSONValue { json["data"] ?? .null }
    var auth: JSONValue { json["auth"] ?? .null }
    /// Vault's `{"errors": [...]}` joined and bounded (Vault's messages hold no secrets; ours never echo tokens).
    var errorText: String {
        let errors = json["errors"]?.array?.compactMap(\.string) ?? []
        guard !errors.isEmpty else { return "HTTP \(status)" }
        return Self.oneLine(errors.map { Self.oneLine($0, limit: 300) }.joined(separator: "; "), limit: 300)
    }

    /// Vault's text as one line of at most `limit` characters, for an error message: each run of whitespace or control
    /// characters (Vault's multi-errors read "1 error occurred:\n\t* …") becomes one space.
    static func oneLine(_ text: String, limit: Int) -> String {
        var out = String.UnicodeScalarView()
        var count = 0, gap = false
        for scalar in text.unicodeScalars {
            if scalar.properties.isWhitespace || scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) {
                gap = count > 0
                continue
            }
            guard count + (gap ? 2 : 1) <= limit else { break }
            if gap { out.append(" "); count += 1; gap = false }
            out.append(scalar)
            count += 1
        }
        return String(out)
    }
}


final class VaultClient: Sendable {
    let http: HTTPSClient
    let breaker: CircuitBreaker
    let backoff: Backoff
    /// Per-attempt bound; the caller's overall deadline bounds all attempts together.
    let requestTimeout: Double
    let namespace: String?
    let onCall: BackendCallHook?

    init(http: HTTPSClient, breaker: CircuitBreaker, backoff: Backoff, requestTimeout: Double,
         namespace: String?, onCall: BackendCallHook?) {
        self.http = http; self.breaker = breaker; self.backoff = backoff
        self.requestTimeout = requestTimeout; self.namespace = namespace; self.onCall = onCall
    }

    static func isRetryable(status: Int) -> Bool { status == 412 || status == 429 || (500...599).contains(status) }

    /// Sends one logical request, retrying transient failures within `deadline`. Returns the final reply, whatever
    /// its status (callers decide what a 4xx means); throws only when no reply could be had.
    func request(op: BackendOperation, method: String, path: String, body: JSONValue? = nil, token: String?,
                 deadline: Date) throws(KMSError) -> VaultReply {
        var headers: [(name: String, value: String)] = [("Accept", "application/json"), ("X-Vault-Request", "true")]
        if let token {
            // A token is a header value: anything but visible ASCII would let a bad token file inject headers.
            guard !token.isEmpty, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                throw KMSError(.permissionDenied, "Vault token contains characters a token cannot have")
            }
            headers.append(("X-Vault-Token", token))
        }
        if let namespace, !namespace.isEmpty { headers.append(("X-Vault-Namespace", namespace)) }
        var payload: [UInt8] = []
        if let body {
            payload = body.serialized()
            headers.append(("Content-Type", "application/json"))
        }
        var request = HTTPRequest(method: method, path: "/v1/" + path, headers: headers, body: payload)
        payload = []  // so the buffer below is the only reference and is wiped in place
        defer { wipe(&request.body) }
        let started = Date()
        // A caller whose time is already up must not reach the breaker: its "timeout" says nothing about Vault.
        guard deadline > started else { throw KMSError(.unavailable, "no time left for Vault \(op.rawValue)") }
        // The breaker is consulted once per call: an open breaker fails the call at once; a half-open one lets this
        // call (with its retries) be the trial.
        guard breaker.allow() else {
            let error = KMSError(.unavailable, "Vault unreachable, failing fast (circuit open)")
            report(op, error.code, started)
            throw error
        }
        var attempt = 0
        var lastProblem = ""
        while true {
            attempt += 1
            let ownBound = Date(timeIntervalSinceNow: requestTimeout)
            let attemptDeadline = min(deadline, ownBound)
            // A caller's deadline (a kube-apiserver grpc-timeout) may be shorter than Vault is given; an attempt it
            // cuts short says nothing about Vault either.
            let cutByCaller = deadline < ownBound.addingTimeInterval(-0.05)
            var retryable = true
            do {
                var response = try http.send(request, deadline: attemptDeadline)
                defer { wipe(&response.body) }
                breaker.recordSuccess()
                let json = JSONValue.parse(response.body) ?? .object([:])
                let reply = VaultReply(status: response.status, json: json)
                if !Self.isRetryable(status: response.status) {
                    report(op, response.status < 300 ? nil : Self.code(forStatus: response.status), started)
                    return reply
                }
                if attempt >= backoff.maxAttempts || !sleepBeforeRetry(attempt, deadline: deadline) {
                    report(op, .unavailable, started)
                    return reply
                }
                continue
            } catch {
                if case .certificateVerification = error { retryable = false }
                lastProblem = "Vault \(op.rawValue): \(error.description)"
            }
            if !retryable || attempt >= backoff.maxAttempts || !sleepBeforeRetry(attempt, deadline: deadline) {
                // Only a call that got no reply at all trips the breaker: the next calls then fail fast instead of
                // each waiting for its own timeout.
                if !(cutByCaller && Date() >= attemptDeadline) { breaker.recordFailure() }
                report(op, .unavailable, started)
                throw KMSError(.unavailable, lastProblem)
            }
        }
    }

    /// Sleeps the jittered backoff; false when that would pass the deadline.
    private func sleepBeforeRetry(_ attempt: Int, deadline: Date) -> Bool {
        let delay = backoff.delay(retry: attempt)
        guard Date(timeIntervalSinceNow: delay + 0.05) < deadline else { return false }
        if delay > 0 { sleep(seconds: delay) }
        return true
    }

    private func report(_ op: BackendOperation, _ code: GRPCStatusCode?, _ started: Date) {
        onCall?(op, code?.name ?? "ok", Date().timeIntervalSince(started))
    }

    static func code(forStatus status: Int) -> GRPCStatusCode {
        switch status {
        case 400: return .invalidArgument
        case 401, 403: return .permissionDenied
        case 404: return .failedPrecondition
        case 412, 429, 500...599: return .unavailable
        default: return .failedPrecondition
        }
    }

    /// Turns a non-2xx reply into an error with Vault's message.
    static func error(_ what: String, _ reply: VaultReply) -> KMSError {
        KMSError(code(forStatus: reply.status), "Vault \(what): \(reply.errorText)")
    }
}
