// Key lifecycle subcommands (owned by the key-lifecycle work). Placeholder until it lands.
enum KeyCommands {
    static func initKeyFile(_ args: [String]) -> Int32 { printError("init: not built yet"); return ExitCode.failure }
    static func rotate(_ args: [String]) -> Int32 { printError("rotate: not built yet"); return ExitCode.failure }
    static func list(_ args: [String]) -> Int32 { printError("list: not built yet"); return ExitCode.failure }
    static func retire(_ args: [String]) -> Int32 { printError("retire: not built yet"); return ExitCode.failure }
    static func prune(_ args: [String]) -> Int32 { printError("prune: not built yet"); return ExitCode.failure }
}
