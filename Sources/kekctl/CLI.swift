// What every kekctl subcommand shares: help, error reporting, exit codes (the flags: CommandLineFlags.Flags).
// Exit codes are a contract for scripts: 0 ok, 1 failure, 2 usage.
import CommandLineFlags
import FoundationEssentials
import Locking
import Glibc

enum ExitCode {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 2
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
