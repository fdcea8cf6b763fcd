// kekd logs JSON lines on stderr. The KMS layer logs rarely (key file reloads), so this stays tiny.
import FoundationEssentials
import Glibc
import Locking

/// Where a backend writes its log lines; tests pass a collector.
public typealias LogSink = @Sendable (String) -> Void

public enum KMSLog {
    /// Writes one line to stderr.
    public static let stderr: LogSink = { line in writeStandardError(line + "\n") }

    /// `{"time":"…","level":"…","msg":"…", <fields>}` with every value a JSON string.
    public static func line(level: String, msg: String, fields: [(String, String)] = []) -> String {
        var s = "{\"time\":\(quote(Date().formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)))),\"level\":\(quote(level)),\"msg\":\(quote(msg))"
        for (k, v) in fields { s += ",\(quote(k)):\(quote(v))" }
        return s + "}"
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
