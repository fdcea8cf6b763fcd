// Command-line parsing for `kekd serve`: every flag validated before anything starts.
import FoundationEssentials
import Glibc

/// Distinct exit codes so a crash-looping static pod tells the operator what is wrong.
enum StartupExit: Int32 {
    case usage = 2
    case keyFile = 3
    case socket = 4
    case audit = 5
    case vault = 6
    case fips = 7
    case health = 8
    case hsm = 9
}

struct StartupError: Error {
    let exit: StartupExit
    let message: String
    init(_ exit: StartupExit, _ message: String) { self.exit = exit; self.message = message }
}

/// `--name value` / `--name=value` pairs and boolean switches.
struct FlagSet {
    var values: [String: String] = [:]
    var switches: Set<String> = []

    init(_ args: [String], valueFlags: Set<String>, switchFlags: Set<String>) throws(StartupError) {
        var i = 0
        while i < args.count {
            let arg = args[i]
            i += 1
            guard arg.hasPrefix("--"), arg.count > 2 else { throw StartupError(.usage, "unexpected argument \(arg)") }
            var name = String(arg.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if valueFlags.contains(name) {
                if let inline { values[name] = inline; continue }
                guard i < args.count else { throw StartupError(.usage, "--\(name) needs a value") }
                values[name] = args[i]
                i += 1
            } else if switchFlags.contains(name) {
                guard inline == nil || inline == "true" else { throw StartupError(.usage, "--\(name) takes no value") }
                switches.insert(name)
            } else {
                throw StartupError(.usage, "unknown flag --\(name) (see kekd serve --help)")
            }
        }
    }

    func string(_ name: String, default value: String) -> String { values[name] ?? value }

    func int(_ name: String, default value: Int, min: Int = 0) throws(StartupError) -> Int {
        guard let raw = values[name] else { return value }
        guard let n = parseSize(raw), n >= min else { throw StartupError(.usage, "--\(name): expected a number ≥ \(min), got \(raw)") }
        return n
    }

    /// A comma-separated list of numeric uids; nil when the flag is absent.
    func uidList(_ name: String) throws(StartupError) -> Set<UInt32>? {
        guard let list = values[name] else { return nil }
        var uids = Set<UInt32>()
        for part in list.split(separator: ",") {
            let words = part.split(whereSeparator: { $0 == " " || $0 == "\t" })  // surrounding blanks only
            guard words.count == 1, let uid = UInt32(words[0]) else {
                throw StartupError(.usage, "--\(name) must be comma-separated numbers, got \(list)")
            }
            uids.insert(uid)
        }
        return uids
    }

    func seconds(_ name: String, default value: Double) throws(StartupError) -> Double {
        guard let raw = values[name] else { return value }
        guard let s = parseDuration(raw) else { throw StartupError(.usage, "--\(name): expected a duration like 5s, 10m, 720h, got \(raw)") }
        return s
    }
}

/// "4194304", "64Ki", "4Mi", "1Gi" (also K/M/G as powers of 1000).
func parseSize(_ raw: String) -> Int? {
    let units: [(String, Int)] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000)]
    for (suffix, factor) in units where raw.hasSuffix(suffix) {
        guard let n = Int(raw.dropLast(suffix.count)), n >= 0, n <= Int.max / factor else { return nil }
        return n * factor
    }
    return Int(raw)
}

/// "500ms", "5s", "10m", "720h", or plain seconds.
func parseDuration(_ raw: String) -> Double? {
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
    for (suffix, factor) in units where raw.hasSuffix(suffix) {
        guard let n = Double(raw.dropLast(suffix.count)), n >= 0, n.isFinite else { return nil }
        return n * factor
    }
    guard let n = Double(raw), n >= 0, n.isFinite else { return nil }
    return n
}

/// `unix:///path`, `unix://relative/path`, or a bare path.
func socketPath(fromListen listen: String) throws(StartupError) -> String {
    var path = listen
    if path.hasPrefix("unix://") { path = String(path.dropFirst("unix://".count)) }
    else if path.contains("://") { throw StartupError(.usage, "--listen must be unix:///path or a path, got \(listen)") }
    guard !path.isEmpty else { throw StartupError(.usage, "--listen needs a socket path") }
    return path
}

/// "127.0.0.1:8787", "[::1]:8787", or "off".
func parseHostPort(_ raw: String) throws(StartupError) -> (host: String, port: UInt16)? {
    if raw == "off" || raw.isEmpty { return nil }
    guard let colon = raw.lastIndex(of: ":"), let port = UInt16(raw[raw.index(after: colon)...]) else {
        throw StartupError(.usage, "--health-addr must be HOST:PORT or off, got \(raw)")
    }
    var host = String(raw[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return (host, port)
}
