// Reads key ranges from etcd through its JSON gateway (`POST /v3/kv/range`, the grpc-gateway etcd serves on its client
// port next to gRPC, on by default), over the project's HTTPS/1.1 client.
//
// Why the gateway and not gRPC: a census only ever calls Range, and the gateway gives the same request and reply
// (keys and values in base64, int64s as strings) over the HTTP/1.1 client kekctl already has, with the same TLS and
// client-certificate checks etcd applies to gRPC. Speaking gRPC to etcd would need our HTTP/2 client over TLS with
// ALPN `h2` and etcd's rpc.proto messages: more code for one call. The cost is base64 (4/3 of the bytes) on the wire.
import FoundationEssentials
import HTTPClient
import JSON

/// Why a read from etcd failed, as one line that names what to check. Never carries a key's value.
public struct EtcdError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Nothing answered (name, connection, timeout).
        case unreachable
        /// etcd's TLS refused our client certificate (or its absence).
        case clientCertificateRefused
        /// etcd's server certificate did not verify against the CA file.
        case serverCertificateNotTrusted
        /// The pinned revision was compacted while the read was under way.
        case compacted
        /// etcd answered with an error, or with something that is not a range reply.
        case failed
    }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) { self.kind = kind; self.message = message }
    public var description: String { message }
}

/// One stored key and its value, as etcd holds them (bytes, not text).
public struct KeyValue: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    public init(key: [UInt8], value: [UInt8]) { self.key = key; self.value = value }
}

public final class EtcdClient: Sendable {
    public let endpoint: Endpoint
    private let http: HTTPSClient
    private let requestTimeout: Double
    /// A page reply larger than this makes the client ask again for half as many keys (etcd has no byte limit on a
    /// range), so one page never holds more than about this much, however large the values.
    public static let maxPageBytes = 32 << 20

    /// `endpoint`: https://host:port (http:// for an etcd without TLS). TLS files are read now and re-read on change.
    public init(endpoint: Endpoint, tls: TLSSettings, connectTimeout: Double = 5, requestTimeout: Double = 30) throws(EtcdError) {
        self.endpoint = endpoint
        var limits = HTTPParserLimits()
        limits.maxBodyBytes = Self.maxPageBytes
        do {
            http = try HTTPSClient(endpoint: endpoint, tls: tls, connectTimeout: connectTimeout, maxIdle: 1, limits: limits)
        } catch {
            throw EtcdError(.failed, "etcd TLS settings: \(error)")
        }
        self.requestTimeout = requestTimeout
    }

    /// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix); [0] (the end of
    /// the key space) when no such key exists.
    public static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }

    /// Calls `visit` for every key in [`key`, `rangeEnd`) in key order, reading `pageSize` keys per request. Every
    /// page is read at one revision: `revision` when given, else the one the first reply reports; that revision is
    /// returned, so further ranges can be read in the same snapshot. Only one page is held at a time.
    @discardableResult
    public func range(from key: [UInt8], to rangeEnd: [UInt8], pageSize: Int, revision: Int64? = nil,
                      _ visit: (KeyValue) -> Void) throws(EtcdError) -> Int64 {
        var next = key
        var pinned = revision
        var limit = max(1, pageSize)
        while true {
            guard let page = try rangePage(from: next, to: rangeEnd, limit: limit, revision: pinned) else {
                guard limit > 1 else {
                    throw EtcdError(.failed, "etcd's range reply for one key is larger than \(Self.maxPageBytes) bytes")
                }
                limit = max(1, limit / 2)
                continue
            }
            if pinned == nil { pinned = page.revision }
            for kv in page.kvs { visit(kv) }
            guard page.more, let last = page.kvs.last else { return pinned ?? 0 }
            next = last.key + [0]  // the smallest key after the last one
        }
    }

    private struct RangePage {
        var revision: Int64
        var kvs: [KeyValue]
        var more: Bool
    }

    /// One range request; nil when the reply was larger than `maxPageBytes` (ask for fewer keys).
    private func rangePage(from key: [UInt8], to rangeEnd: [UInt8], limit: Int, revision: Int64?) throws(EtcdError) -> RangePage? {
        var request: [String: JSONValue] = [
            "key": .string(Data(key).base64EncodedString()),
            "range_end": .string(Data(rangeEnd).base64EncodedString()),
            "limit": .number(Double(limit)),
        ]
        if let revision { request["revision"] = .string(String(revision)) }
        let response: HTTPResponse
        do {
            response = try http.send(HTTPRequest(method: "POST", path: "/v3/kv/range",
                                                 headers: [("Content-Type", "application/json"), ("Accept", "application/json")],
                                                 body: JSONValue.object(request).serialized()),
                                     deadline: Date(timeIntervalSinceNow: requestTimeout))
        } catch {
            if error.isResponseTooLarge { return nil }
            throw Self.classify(error, endpoint: endpoint)
        }
        let reply = JSONValue.parse(response.body)
        guard response.status == 200 else {
            throw Self.classify(status: response.status, reply: reply, revision: revision)
        }
        guard let reply, case .object = reply else { throw EtcdError(.failed, "etcd sent a range reply that is not a JSON object") }
        guard let revisionText = reply["header"]?["revision"], let headerRevision = revisionText.int else {
            throw EtcdError(.failed, "etcd's range reply has no header revision")
        }
        var kvs: [KeyValue] = []
        for item in reply["kvs"]?.array ?? [] {
            guard let keyText = item["key"]?.string, let keyBytes = Data(base64Encoded: keyText) else {
                throw EtcdError(.failed, "etcd's range reply has a key that is not base64")
            }
            var value: [UInt8] = []
            if let valueText = item["value"]?.string {  // absent when the value is empty
                guard let bytes = Data(base64Encoded: valueText) else {
                    throw EtcdError(.failed, "etcd's range reply has a value that is not base64")
                }
                value = [UInt8](bytes)
            }
            kvs.append(KeyValue(key: [UInt8](keyBytes), value: value))
        }
        return RangePage(revision: Int64(headerRevision), kvs: kvs, more: reply["more"]?.bool ?? false)
    }

    /// TLS alerts that mean the server refused the certificate we presented (or that we presented none).
    private static let refusedCertificateSigns = ["bad certificate", "certificate required", "unknown ca", "certificate unknown",
                                                  "unsupported certificate", "certificate expired", "certificate revoked", "access denied"]

    static func classify(_ error: TransportError, endpoint: Endpoint) -> EtcdError {
        let address = "\(endpoint.secure ? "https" : "http")://\(endpoint.hostHeader)"
        switch error {
        case .resolve, .connect, .timeout:
            return EtcdError(.unreachable, "cannot reach etcd at \(address): \(error)")
        case .certificateVerification(let reason):
            return EtcdError(.serverCertificateNotTrusted, "etcd at \(address) presented a certificate the CA file does not verify: \(reason)")
        case .tls(let message) where refusedCertificateSigns.contains(where: { message.lowercased().contains($0) }):
            return EtcdError(.clientCertificateRefused, "etcd at \(address) refused the client certificate (\(message)); check --etcd-cert/--etcd-key are signed by etcd's client CA")
        case .closed:
            // etcd with --client-cert-auth may also just close the connection after a refused handshake.
            return EtcdError(.clientCertificateRefused, "etcd at \(address) closed the connection without a reply (a refused client certificate looks like this); check --etcd-cert/--etcd-key")
        case .tls, .protocolError:
            return EtcdError(.failed, "etcd at \(address): \(error)")
        }
    }

    static func classify(status: Int, reply: JSONValue?, revision: Int64?) -> EtcdError {
        // grpc-gateway errors: {"error": "...", "code": <gRPC code>, "message": "..."}.
        let message = reply?["message"]?.string ?? reply?["error"]?.string ?? ""
        let code = reply?["code"]?.int
        if message.contains("compacted") || (code == 11 && revision != nil) {
            return EtcdError(.compacted, "etcd compacted revision \(revision.map(String.init) ?? "?") while it was being read (\(message)); run again")
        }
        if status == 404 {
            return EtcdError(.failed, "etcd does not serve its JSON gateway (POST /v3/kv/range answered 404); it is on unless etcd runs with --enable-grpc-gateway=false")
        }
        let detail = message.isEmpty ? "HTTP \(status)" : "HTTP \(status), \(message)"
        return EtcdError(.failed, "etcd refused the range request (\(detail))")
    }
}
