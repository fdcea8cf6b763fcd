// Structured logs: one JSON object per line on stderr. Callers never pass key material or plaintext.
import FoundationEssentials
import Glibc
import Locking

public enum LogLevel: Int, Sendable, Comparable {
    case debug = 0, info, warn, error
    public init?(name: String) {
        switch name.lowercased() {
        case "debug": self = .debug
        case "info": self = .info
        case "warn", "warning": self = .warn
        case "error": self = .error
        default: return nil
        }
    }
    var name: String { switch self { case .debug: "debug"; case .info: "info"; case .warn: "warn"; case .error: "error" } }
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
}

public final class Logger: Sendable {
    public let minimumLevel: LogLevel
    private let lock = LockedValue(())
    private let fd: Int32

    public init(minimumLevel: LogLevel = .info, fd: Int32 = 2) {
        self.minimumLevel = minimumLevel
        self.fd = fd
    }

    public func debug(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.debug, msg, fields) }
    public func info(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.info, msg, fields) }
    public func warn(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.warn, msg, fields) }
    public func error(_ msg: String, _ fields: KeyValuePairs<String, any Sendable> = [:]) { log(.error, msg, fields) }

    public func log(_ level: LogLevel, _ msg: String, _ fields: KeyValuePairs<String, any Sendable>) {
        guard level >= minimumLevel else { return }
        var line = "{\"time\":\"\(Self.timestamp())\",\"level\":\"\(level.name)\",\"msg\":\(jsonString(msg))"
        for (key, value) in fields {
            line += ",\(jsonString(key)):"
            switch value {
            case let v as Int: line += String(v)
            case let v as Int32: line += String(v)
            case let v as UInt32: line += String(v)
            case let v as UInt64: line += String(v)
            case let v as Double: line += String(v)
            case let v as Bool: line += v ? "true" : "false"
            default: line += jsonString("\(value)")
            }
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        lock.withLock { _ in
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if n <= 0 { if errno == EINTR { continue }; break }
                offset += n
            }
        }
        bytes.removeAll()
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = time_t(ts.tv_sec)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        let frac = String(ts.tv_nsec / 1000)
        let micros = String(repeating: "0", count: 6 - frac.count) + frac
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tmv.tm_year + 1900)-\(two(tmv.tm_mon + 1))-\(two(tmv.tm_mday))T\(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec)).\(micros)Z"
    }
}

/// A JSON string literal with every control character escaped.
func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 || u.value == 0x7F || u.value == 0x2028 || u.value == 0x2029 {
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}
