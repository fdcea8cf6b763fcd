// kekctl: manage kekd's keys and probe a running plugin.
import FoundationEssentials
import Glibc
import Locking
import CommandLineFlags

nonisolated(unsafe) let subcommands: [(name: String, summary: String, run: ([String]) -> Int32)] = [
    ("init", "create a new key file with one primary version", KeyCommands.initKeyFile),
    ("rotate", "add a new primary version; the old one stays for decryption", KeyCommands.rotate),
    ("list", "list key versions (never key bytes)", KeyCommands.list),
    ("retire", "retire a key version", KeyCommands.retire),
    ("prune", "drop retired key versions from the key file", KeyCommands.prune),
    ("pkcs11", "HSM key family: `kekctl pkcs11 init|rotate|list|retire`", PKCS11Commands.run),
    ("audit", "audit log tools: `kekctl audit verify PATH`", AuditCommands.run),
    ("status", "call Status on a running kekd", ProbeCommands.status),
    ("encrypt", "Encrypt stdin through a running kekd", ProbeCommands.encrypt),
    ("decrypt", "Decrypt stdin through a running kekd", ProbeCommands.decrypt),
    ("bench", "load-test a running kekd (used by scripts/bench)", ProbeCommands.bench),
    ("doctor", "check kekd, kube-apiserver's encryption setup and the node", DoctorCommand.run),
    ("census", "count what etcd stores by storage kind and key_id (read-only)", CensusCommand.run),
    ("rotate-cluster", "rotate the KMS key of a whole control plane, migrate and prove it; resumable", RotateClusterCommand.run),
]

@MainActor func usage() -> String {
    var s = "usage: kekctl COMMAND [flags]   (kekctl COMMAND --help for details)\n\ncommands:\n"
    // The summaries start in one column, two spaces past the longest command name.
    let column = subcommands.map(\.name.count).max().map { $0 + 2 } ?? 0
    for c in subcommands { s += "  " + padded(c.name, to: column) + c.summary + "\n" }
    return s
}

let argv = Array(CommandLine.arguments.dropFirst())
guard let first = argv.first else {
    writeStandardError(usage())
    exit(ExitCode.usage)
}
if first == "--version" || first == "version" {
    print("kekctl \(BuildInfo.version)")
    exit(ExitCode.ok)
}
if first == "--help" || first == "-h" || first == "help" {
    print(usage())
    exit(ExitCode.ok)
}
guard let command = subcommands.first(where: { $0.name == first }) else {
    writeStandardError("kekctl: unknown command \(first)\n\n\(usage())")
    exit(ExitCode.usage)
}
exit(command.run(Array(argv.dropFirst())))
