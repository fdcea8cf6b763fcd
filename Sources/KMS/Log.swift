// kekd logs JSON lines on stderr. The KMS layer logs rarely (key file reloads), so this stays tiny.
import FoundationEssentials
import JSON
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

    /// A JSON string literal, escaped by the JSON target's writer.
    static func quote(_ text: String) -> String {
        String(decoding: JSONValue.string(text).serialized(), as: UTF8.self)
    }
}
