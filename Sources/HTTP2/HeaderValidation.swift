// RFC 9113 §8.2-8.3 field validation. A violation makes the message malformed: a stream PROTOCOL_ERROR.
import HPACK

/// Why a header list is malformed (the text goes into the RST_STREAM event's reason).
public struct MalformedHeaders: Error, Equatable, Sendable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

/// What HTTP/2 and its owner need to know about one field: which of the few names that matter it has, and whether it
/// is malformed byte-wise (§8.2.1). Computed once per distinct field: the connection's HPACK decoder classifies each
/// literal and keeps the class with its dynamic-table entry, so the indexed fields of repeated requests arrive
/// classified and are not scanned again.
public struct FieldClass: Equatable, Sendable {
    public enum Name: UInt16, Sendable {
        case other = 0, method, scheme, path, authority, status, unknownPseudo
        case te, connectionSpecific, contentLength, contentType

        public var isPseudo: Bool { rawValue >= Name.method.rawValue && rawValue <= Name.unknownPseudo.rawValue }
    }
    public var name: Name
    /// An invalid name (empty, uppercase, controls, ...) or value (NUL, CR, LF, edge whitespace): the slow checks
    /// then run to say which.
    public var isMalformed: Bool

    private static let classified: UInt16 = 0x8000
    private static let malformed: UInt16 = 0x4000

    /// The field's class: cached by the decoder, or computed now for a field built otherwise.
    public init(_ field: HeaderField) {
        let bits = field.classification & Self.classified != 0 ? field.classification : Self.classify(field)
        name = Name(rawValue: bits & 0xff) ?? .other
        isMalformed = bits & Self.malformed != 0
    }

    /// The `HeaderFieldClassifier` of HTTP/2 connections.
    @Sendable public static func classify(_ field: HeaderField) -> UInt16 {
        let name: Name
        switch field.name {
        case ":method": name = .method
        case ":scheme": name = .scheme
        case ":path": name = .path
        case ":authority": name = .authority
        case ":status": name = .status
        case "te": name = .te
        case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade": name = .connectionSpecific
        case "content-length": name = .contentLength
        case "content-type": name = .contentType
        default: name = field.name.utf8.first == UInt8(ascii: ":") ? .unknownPseudo : .other
        }
        var wellFormed = (try? HeaderValidation.checkValue(field.value.utf8)) != nil
        if !name.isPseudo && (try? HeaderValidation.checkRegularName(field.name.utf8)) == nil { wellFormed = false }
        return classified | name.rawValue | (wellFormed ? 0 : malformed)
    }
}

public enum HeaderValidation {
    public enum Kind: Sendable { case request, response, trailers }

    /// Checks one header list; returns the declared content-length, if any (§8.1.1 makes a mismatch malformed).
    /// Byte-level checks run only for fields classified malformed (`FieldClass`), to name the violation.
    public static func validate(_ fields: [HeaderField], kind: Kind) throws(MalformedHeaders) -> Int? {
        var seenRegular = false
        var isConnect: Bool?   // nil: no :method yet
        var hasScheme = false, hasPath = false, hasAuthority = false, hasStatus = false
        var contentLength: Int?
        // By index, not `for field in fields`: the iterator would copy (retain and release) every name and value.
        for index in fields.indices {
            let fieldClass = FieldClass(fields[index])
            if fieldClass.name.isPseudo {
                guard !seenRegular else {
                    throw MalformedHeaders("pseudo-header \(fields[index].name) after regular fields")
                }
                switch (kind, fieldClass.name) {
                case (.request, .method):
                    guard isConnect == nil else { throw MalformedHeaders("duplicate :method") }
                    guard !fields[index].value.isEmpty else { throw MalformedHeaders("empty :method") }
                    isConnect = fields[index].value == "CONNECT"
                case (.request, .scheme):
                    guard !hasScheme else { throw MalformedHeaders("duplicate :scheme") }
                    hasScheme = true
                case (.request, .path):
                    guard !hasPath else { throw MalformedHeaders("duplicate :path") }
                    guard !fields[index].value.isEmpty else { throw MalformedHeaders("empty :path") }
                    hasPath = true
                case (.request, .authority):
                    guard !hasAuthority else { throw MalformedHeaders("duplicate :authority") }
                    hasAuthority = true
                case (.response, .status):
                    guard !hasStatus else { throw MalformedHeaders("duplicate :status") }
                    let digits = fields[index].value.utf8
                    guard digits.count == 3, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                        throw MalformedHeaders("invalid :status")
                    }
                    hasStatus = true
                default:
                    throw MalformedHeaders("pseudo-header \(fields[index].name) not allowed here")
                }
            } else {
                seenRegular = true
                if fieldClass.isMalformed { try checkRegularName(fields[index].name.utf8) }
                switch fieldClass.name {
                case .te:
                    if fields[index].value != "trailers" { throw MalformedHeaders("te other than trailers") }
                case .connectionSpecific:
                    throw MalformedHeaders("connection-specific field \(fields[index].name)")
                case .contentLength:
                    guard let n = parseContentLength(fields[index].value),
                          contentLength == nil || contentLength == n else {
                        throw MalformedHeaders("invalid content-length")
                    }
                    contentLength = n
                default:
                    break
                }
            }
            if fieldClass.isMalformed { try checkValue(fields[index].value.utf8) }
        }
        switch kind {
        case .request:
            guard let isConnect else { throw MalformedHeaders("missing :method") }
            if isConnect {
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

    fileprivate static func checkRegularName(_ name: String.UTF8View) throws(MalformedHeaders) {
        if name.isEmpty { throw MalformedHeaders("empty field name") }
        // §8.2.1: no uppercase, no controls/space, no DEL or non-ASCII; ':' only leads pseudo-headers.
        let valid = name.withContiguousStorageIfAvailable { bytes in
            !bytes.contains { $0 <= 0x20 || $0 >= 0x7f || ($0 >= 0x41 && $0 <= 0x5a) || $0 == UInt8(ascii: ":") }
        } ?? !name.contains { $0 <= 0x20 || $0 >= 0x7f || ($0 >= 0x41 && $0 <= 0x5a) || $0 == UInt8(ascii: ":") }
        if !valid { throw MalformedHeaders("invalid field name") }
    }

    fileprivate static func checkValue(_ value: String.UTF8View) throws(MalformedHeaders) {
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
