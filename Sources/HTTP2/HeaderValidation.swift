// RFC 9113 §8.2-8.3 field validation. A violation makes the message malformed: a stream PROTOCOL_ERROR.
import HPACK

/// Why a header list is malformed (the text goes into the RST_STREAM event's reason).
public struct MalformedHeaders: Error, Equatable, Sendable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

public enum HeaderValidation {
    public enum Kind: Sendable { case request, response, trailers }

    /// Checks one header list; returns the declared content-length, if any (§8.1.1 makes a mismatch malformed).
    public static func validate(_ fields: [HeaderField], kind: Kind) throws(MalformedHeaders) -> Int? {
        var seenRegular = false
        var method: String?
        var hasScheme = false, hasPath = false, hasAuthority = false, hasStatus = false
        var contentLength: Int?
        for field in fields {
            let name = field.name.utf8
            guard let first = name.first else { throw MalformedHeaders("empty field name") }
            if first == UInt8(ascii: ":") {
                guard !seenRegular else { throw MalformedHeaders("pseudo-header \(field.name) after regular fields") }
                switch (kind, field.name) {
                case (.request, ":method"):
                    guard method == nil else { throw MalformedHeaders("duplicate :method") }
                    guard !field.value.isEmpty else { throw MalformedHeaders("empty :method") }
                    method = field.value
                case (.request, ":scheme"):
                    guard !hasScheme else { throw MalformedHeaders("duplicate :scheme") }
                    hasScheme = true
                case (.request, ":path"):
                    guard !hasPath else { throw MalformedHeaders("duplicate :path") }
                    guard !field.value.isEmpty else { throw MalformedHeaders("empty :path") }
                    hasPath = true
                case (.request, ":authority"):
                    guard !hasAuthority else { throw MalformedHeaders("duplicate :authority") }
                    hasAuthority = true
                case (.response, ":status"):
                    guard !hasStatus else { throw MalformedHeaders("duplicate :status") }
                    let digits = field.value.utf8
                    guard digits.count == 3, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                        throw MalformedHeaders("invalid :status")
                    }
                    hasStatus = true
                default:
                    throw MalformedHeaders("pseudo-header \(field.name) not allowed here")
                }
            } else {
                seenRegular = true
                try checkRegularName(name)
                // Only names of these lengths need a closer look (te, upgrade, connection/keep-alive,
                // content-length, proxy-connection, transfer-encoding): keeps the common path to one byte scan.
                switch name.count {
                case 2:
                    if field.name == "te" && field.value != "trailers" { throw MalformedHeaders("te other than trailers") }
                case 7, 10, 16, 17:
                    switch field.name {
                    case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
                        throw MalformedHeaders("connection-specific field \(field.name)")
                    default:
                        break
                    }
                case 14 where field.name == "content-length":
                    guard let n = parseContentLength(field.value), contentLength == nil || contentLength == n else {
                        throw MalformedHeaders("invalid content-length")
                    }
                    contentLength = n
                default:
                    break
                }
            }
            try checkValue(field.value.utf8)
        }
        switch kind {
        case .request:
            guard let method else { throw MalformedHeaders("missing :method") }
            if method == "CONNECT" {
                guard hasAuthority, !hasScheme, !hasPath else { throw MalformedHeaders("malformed CONNECT request") }
            } else {
                guard hasScheme, hasPath else { throw MalformedHeaders("missing :scheme or :path") }
            }
        case .response:
            guard hasStatus else { throw MalformedHeaders("missing :status") }
        case .trailers:
            break
        }
        return contentLength
    }

    private static func checkRegularName(_ name: String.UTF8View) throws(MalformedHeaders) {
        // §8.2.1: no uppercase, no controls/space, no DEL or non-ASCII; ':' only leads pseudo-headers.
        let valid = name.withContiguousStorageIfAvailable { bytes in
            !bytes.contains { $0 <= 0x20 || $0 >= 0x7f || ($0 >= 0x41 && $0 <= 0x5a) || $0 == UInt8(ascii: ":") }
        } ?? !name.contains { $0 <= 0x20 || $0 >= 0x7f || ($0 >= 0x41 && $0 <= 0x5a) || $0 == UInt8(ascii: ":") }
        if !valid { throw MalformedHeaders("invalid field name") }
    }

    private static func checkValue(_ value: String.UTF8View) throws(MalformedHeaders) {
        let forbidden = value.withContiguousStorageIfAvailable { bytes in
            bytes.contains { $0 == 0 || $0 == 0x0a || $0 == 0x0d }
        } ?? value.contains { $0 == 0 || $0 == 0x0a || $0 == 0x0d }
        if forbidden {
            throw MalformedHeaders("field value holds NUL, CR or LF")
        }
        if let first = value.first, first == 0x20 || first == 0x09 {
            throw MalformedHeaders("field value starts with whitespace")
        }
        if let last = value.last, last == 0x20 || last == 0x09 {
            throw MalformedHeaders("field value ends with whitespace")
        }
    }

    private static func parseContentLength(_ text: String) -> Int? {
        guard !text.isEmpty, text.utf8.count <= 18 else { return nil }
        var n = 0
        for byte in text.utf8 {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            n = n * 10 + Int(byte - 0x30)
        }
        return n
    }
}
