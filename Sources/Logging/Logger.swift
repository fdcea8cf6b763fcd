// The one logger of every module: one JSON object per line, `{"time":…,"level":…,"msg":…, <fields>}`, written by
// JSONWriter (pure ASCII) to stderr, below `--log-level` dropped before anything is formatted. Callers never pass key
// material, plaintext or tokens.
import FoundationEssentials
import JSON
import Locking

public enum LogLevel: Int, Sendable, Comparable {
    case debug = 0, info, warn, error

    /// `--log-level` values ("warning" is accepted for "warn").
    public init?(name: String) {
        switch name.lowercased() {
        case "debug": self = .debug
        case "info": self = .info
        case "warn", "warning": self = .warn
        case "error": self = .error
        default: return nil
        }
    }

    /// The `level` field of a line.
    public var name: StaticString {
        switch self {
        case .debug: "debug"
        case .info: "info"
        case .warn: "warn"
        case .error: "error"
        }
    }

    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
}

/// Where finished lines go: one call per line, the bytes ending in "\n".
public typealias LogOutput = @Sendable (_ line: [UInt8]) -> Void

public final class Logger: Sendable {
    public let minimumLevel: LogLevel
    private let output: LogOutput
    /// Fields every line of this logger carries after `msg` (`with(_:)`), already encoded.
    private let context: [UInt8]

    /// - Parameter output: stderr by default; tests collect lines instead.
    public init(minimumLevel: LogLevel = .info, output: @escaping LogOutput = Logger.standardError) {
        self.minimumLevel = minimumLevel
        self.output = output
        self.context = []
    }

    private init(minimumLevel: LogLevel, output: @escaping LogOutput, context: [UInt8]) {
        self.minimumLevel = minimumLevel
        self.output = output
        self.context = context
    }

    /// The same logger (level, output) with fields added to every line, e.g. `["backend": "vault"]`.
    public func with(_ fields: KeyValuePairs<String, any Sendable>) -> Logger {
        var context = self.context
        Self.appendFields(fields, to: &context)
        return Logger(minimumLevel: minimumLevel, output: output, context: context)
    }

    public func debug(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.debug, msg, fields) }
    public func info(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.info, msg, fields) }
    public func warn(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.warn, msg, fields) }
    public func error(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.error, msg, fields) }

    public func log(_ level: LogLevel, _ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) {
        guard level >= minimumLevel else { return }
        output(Self.line(level, msg, context: context, fields: fields, time: Date()))
    }

    /// One line: time (RFC 3339, UTC, nanoseconds), level, msg, the logger's context, then `fields` in order.
    static func line(_ level: LogLevel, _ msg: String, context: [UInt8], fields: KeyValuePairs<String, any Sendable>,
                     time: Date) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128 + msg.utf8.count + context.count)
        out.append(0x7B)
        JSONWriter.appendKey("time", to: &out, first: true)
        out.append(0x22)
        RFC3339.append(time, to: &out)
        out.append(0x22)
        JSONWriter.appendKey("level", to: &out)
        out.append(0x22)
        level.name.withUTF8Buffer { out.append(contentsOf: $0) }
        out.append(0x22)
        JSONWriter.appendKey("msg", to: &out)
        JSONWriter.appendString(msg, to: &out)
        out.append(contentsOf: context)
        appendFields(fields, to: &out)
        out.append(contentsOf: [0x7D, 0x0A])
        return out
    }

    /// `,"key":value` for each field: integers and booleans as JSON numbers and literals, finite doubles as
    /// numbers, a String-backed enum as its raw value (its fixed name, never the Swift case name), anything else as
    /// its description in a string.
    private static func appendFields(_ fields: KeyValuePairs<String, any Sendable>, to out: inout [UInt8]) {
        for (key, value) in fields {
            JSONWriter.appendKey(named: key, to: &out)
            switch value {
            case let v as Int: JSONWriter.appendInteger(v, to: &out)
            case let v as Int32: JSONWriter.appendInteger(v, to: &out)
            case let v as UInt32: JSONWriter.appendInteger(v, to: &out)
            case let v as UInt64: JSONWriter.appendInteger(v, to: &out)
            case let v as Bool: out.append(contentsOf: (v ? "true" : "false").utf8)
            case let v as Double where v.isFinite: out.append(contentsOf: String(v).utf8)
            case let v as String: JSONWriter.appendString(v, to: &out)
            case let v as any RawRepresentable<String>: JSONWriter.appendString(v.rawValue, to: &out)
            default: JSONWriter.appendString("\(value)", to: &out)
            }
        }
    }

    /// Whole lines on fd 2, one writer at a time so lines longer than a pipe's atomic write never interleave.
    public static let standardError: LogOutput = { line in
        standardErrorLock.withLock { _ = writeFully(2, line) }
    }
    // A plain lock: a LockedValue of `()` makes ThreadSanitizer report its zero-sized inout access, which lands at
    // the end of the object, as a race with whatever is allocated next.
    private static let standardErrorLock = Lock()
}
