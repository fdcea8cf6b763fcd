// The one flag parser of kekd and kekctl: `--name value`, `--name=value`, `--switch`, positionals; strict, so a typo
// is a usage error (exit 2) rather than a silently ignored setting.

/// A mistake in the command line: the message names the flag; the executable prints it with its usage and exits 2.
public struct UsageError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Parsed arguments: the last value of each value flag, the switches given, the prefixed flags in order, positionals.
public struct Flags: Sendable {
    public private(set) var values: [String: String] = [:]
    public private(set) var switches: Set<String> = []
    /// Every `--PREFIX` and `--PREFIX-NAME` flag (for each of `valuePrefixes`), in order; repeatable, each takes a value.
    public private(set) var prefixed: [(name: String, value: String)] = []
    public private(set) var positionals: [String] = []

    /// `valueFlags` take a value, `switchFlags` none (`--switch=true` is accepted too). A word not starting with `--`
    /// is a positional, or a usage error when `allowsPositionals` is false. `unknownFlagHint` follows the
    /// "unknown flag --NAME" message (e.g. " (see kekd serve --help)").
    public init(_ args: [String], valueFlags: Set<String>, switchFlags: Set<String> = [], valuePrefixes: Set<String> = [],
                allowsPositionals: Bool = true, unknownFlagHint: String = "") throws(UsageError) {
        var i = 0
        while i < args.count {
            let arg = args[i]
            i += 1
            guard arg.hasPrefix("--"), arg.count > 2 else {
                guard allowsPositionals else { throw UsageError(message: "unexpected argument \(arg)") }
                positionals.append(arg)
                continue
            }
            var name = String(arg.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            let isPrefixed = valuePrefixes.contains { name == $0 || name.hasPrefix($0 + "-") }
            if valueFlags.contains(name) || isPrefixed {
                let value: String
                if let inline {
                    value = inline
                } else {
                    guard i < args.count else { throw UsageError(message: "--\(name) needs a value") }
                    value = args[i]
                    i += 1
                }
                if isPrefixed { prefixed.append((name, value)) } else { values[name] = value }
            } else if switchFlags.contains(name) {
                guard inline == nil || inline == "true" else { throw UsageError(message: "--\(name) takes no value") }
                switches.insert(name)
            } else {
                throw UsageError(message: "unknown flag --\(name)\(unknownFlagHint)")
            }
        }
    }

    public func value(_ name: String) -> String? { values[name] }
    public func has(_ name: String) -> Bool { switches.contains(name) }
    public func string(_ name: String, default value: String) -> String { values[name] ?? value }

    /// The value, which must be given and not empty.
    public func required(_ name: String) throws(UsageError) -> String {
        guard let v = values[name], !v.isEmpty else { throw UsageError(message: "--\(name) is required") }
        return v
    }

    /// A size (`parseSize`) of at least `min`; `value` when the flag is absent.
    public func int(_ name: String, default value: Int, min: Int = 0) throws(UsageError) -> Int {
        guard let raw = values[name] else { return value }
        guard let n = parseSize(raw), n >= min else { throw UsageError(message: "--\(name): expected a number ≥ \(min), got \(raw)") }
        return n
    }

    /// A comma-separated list of numeric uids; nil when the flag is absent.
    public func uidList(_ name: String) throws(UsageError) -> Set<UInt32>? {
        guard let list = values[name] else { return nil }
        var uids = Set<UInt32>()
        for part in list.split(separator: ",") {
            let words = part.split(whereSeparator: { $0 == " " || $0 == "\t" })  // surrounding blanks only
            guard words.count == 1, let uid = UInt32(words[0]) else {
                throw UsageError(message: "--\(name) must be comma-separated numbers, got \(list)")
            }
            uids.insert(uid)
        }
        return uids
    }

    /// A duration (`parseDuration`) in seconds; `value` when the flag is absent.
    public func seconds(_ name: String, default value: Double) throws(UsageError) -> Double {
        guard let raw = values[name] else { return value }
        guard let s = parseDuration(raw) else {
            throw UsageError(message: "--\(name): expected a duration like 5s, 10m, 720h, got \(raw)")
        }
        return s
    }
}

/// "4194304", "64Ki", "4Mi", "1Gi" (also K/M/G as powers of 1000).
public func parseSize(_ raw: String) -> Int? {
    let units: [(String, Int)] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000)]
    for (suffix, factor) in units where raw.hasSuffix(suffix) {
        guard let n = Int(raw.dropLast(suffix.count)), n >= 0, n <= Int.max / factor else { return nil }
        return n * factor
    }
    return Int(raw)
}

/// Seconds from "500ms", "5s", "1.5h", "30d", a sum of such parts ("1h30m"), or a plain number of seconds; nil for
/// anything else (negative, not finite, unknown unit). kekd's and kekctl's duration flags all read this grammar.
public func parseDuration(_ raw: String) -> Double? {
    if let seconds = Double(raw) { return seconds >= 0 && seconds.isFinite ? seconds : nil }
    return sumOfUnitParts(raw, units: [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)])
}

/// The sum of the `<number><unit>` parts of `text` (digits and dots, then a unit; units are tried in order, so list
/// "ms" before "m"); nil when `text` is empty, a part lacks a known unit, or the sum is not finite.
public func sumOfUnitParts(_ text: String, units: [(suffix: String, factor: Double)]) -> Double? {
    var rest = Substring(text)
    var total = 0.0
    guard !rest.isEmpty else { return nil }
    while !rest.isEmpty {
        let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        guard !number.isEmpty, let value = Double(number) else { return nil }
        rest = rest.dropFirst(number.count)
        guard let unit = units.first(where: { rest.hasPrefix($0.suffix) }) else { return nil }
        rest = rest.dropFirst(unit.suffix.count)
        total += value * unit.factor
    }
    return total.isFinite ? total : nil
}
