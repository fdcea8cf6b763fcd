// `kekctl audit ...` (owned by the audit work). Placeholder until it lands.
enum AuditCommands {
    static func run(_ args: [String]) -> Int32 { printError("audit: not built yet"); return ExitCode.failure }
}
