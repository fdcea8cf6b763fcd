// kekd: the Kubernetes KMS v2 plugin daemon. Parses the command line into a configuration, assembles the daemon
// from it (Daemon.swift) and waits for signals. Nothing else.
import CommandLineFlags
import FoundationEssentials
import Glibc
import Locking
import Logging

SignalWaiter.blockAll()
// Before any key is read: a core dump or a same-uid debugger would otherwise see KEKs and tokens.
if let reason = ProcessHardening.disableCoreDumps() {
    writeStandardError("kekd: cannot disable core dumps: \(reason)\n")
}
let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "serve":
    let invocation: ServeInvocation
    do {
        invocation = try DaemonConfiguration.parse(Array(arguments.dropFirst()), environment: ProcessInfo.processInfo.environment,
                                                   userID: getuid())
    } catch {
        writeStandardError("kekd: \(error.message)\n")
        exit(StartupExit.usage.rawValue)
    }
    switch invocation {
    case .help:
        print(serveHelp)
    case .serve(let configuration):
        do {
            exit(try Daemon.start(configuration).runUntilStopped())
        } catch {
            writeStandardError("kekd: \(error.message)\n")
            exit(error.exit.rawValue)
        }
    }
case "version", "--version":
    print("kekd \(BuildInfo.version)")
case "--help", "-h", "help":
    print("usage: kekd serve [flags]   (kekd serve --help)\n       kekd version")
default:
    writeStandardError("usage: kekd serve [flags]   (kekd serve --help)\n       kekd version\n")
    exit(StartupExit.usage.rawValue)
}
