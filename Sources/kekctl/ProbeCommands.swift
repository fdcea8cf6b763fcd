// Probing a running kekd over its socket. Placeholder until the gRPC client lands.
enum ProbeCommands {
    static func status(_ args: [String]) -> Int32 { printError("status: not built yet"); return ExitCode.failure }
    static func encrypt(_ args: [String]) -> Int32 { printError("encrypt: not built yet"); return ExitCode.failure }
    static func decrypt(_ args: [String]) -> Int32 { printError("decrypt: not built yet"); return ExitCode.failure }
}
