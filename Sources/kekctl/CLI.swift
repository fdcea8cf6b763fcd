// A small, strict argument parser shared by every kekctl subcommand.
// Exit codes are a contract for scripts: 0 ok, 1 failure, 2 usage.
import FoundationEssentials
import Locking
import Glibc

enum ExitCode {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 2
}

struct UsageError: Error { let message: String }

/// Parsed `--flag value`, `--flag=value` and `--switch` arguments plus positionals.
struct Arguments {
    private(set) var values: [String: String] = [:]
    private(set) var switches: Set<String> = []
    private(set) var positionals: [String] = []

    /// `valueFlags` take a value; `switchFlags` do not. Anything else is a usage error.
    init(_ args: [String], valueFlags: Set<String>, switchFlags: Set<String> = []) throws(UsageError) {
        var i = 0
        while i < args.count {
            let arg = args[i]
            i += 1
            guard arg.hasPrefix("--"), arg.count > 2 else { positionals.append(arg); continue }
            var name = String(arg.dropFirst(2))
            var inline: String? = nil
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if valueFlags.contains(name) {
                if let inline { values[name] = inline; continue }
                guard i < args.count else { throw UsageError(message: "--\(name) needs a value") }
                values[name] = args[i]
                i += 1
            } else if switchFlags.contains(name), inline == nil {
                switches.insert(name)
            } else {
                throw UsageError(message: "unknown flag --\(name)")
            }
        }
    }

    func value(_ name: String) -> String? { values[name] }
    func has(_ name: String) -> Bool { switches.contains(name) }
    func required(_ name: String) throws(UsageError) -> String {
        guard let v = values[name], !v.isEmpty else { throw UsageError(message: "--\(name) is required") }
        return v
    }
}

/// Runs a subcommand body, printing `help` for --help/-h and mapping errors to exit codes.
func runCommand(_ args: [String], help: String, _ body: ([String]) throws -> Int32) -> Int32 {
    if args.contains("--help") || args.contains("-h") {
        print(help)
        return ExitCode.ok
    }
    do {
        return try body(args)
    } catch let error as UsageError {
        writeStandardError("kekctl: \(error.message)\n\n\(help)\n")
        return ExitCode.usage
    } catch {
        writeStandardError("kekctl: \(error)\n")
        return ExitCode.failure
    }
}

func printError(_ message: String) {
    writeStandardError("kekctl: \(message)\n")
}

/// `text` left-aligned in a column of `width` characters (never truncated).
func padded(_ text: String, to width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}

/// JSON text of an Encodable value with sorted keys, for kekctl's `--json` output.
func jsonText<T: Encodable>(_ value: T, pretty: Bool = false) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
