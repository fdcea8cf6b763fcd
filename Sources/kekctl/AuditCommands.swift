// `kekctl audit verify`: checks an audit log's HMAC chain (and its rotated predecessors).
import Audit
import CommandLineFlags
import Crypto
import FoundationEssentials
import Glibc
import KMS

enum AuditCommands {
    static let help = """
        usage: kekctl audit verify PATH (--audit-hmac-key-file F | --key-file F) [--no-rotated]
                                   [--expect-seq N] [--expect-head HEX]

        Verifies the audit log PATH and its rotated predecessors (PATH.1, PATH.2, ..., oldest first) as one
        chain: every line a chained record, seq without gaps or reordering, every chain value correct, and each
        file linked to the one before it. Prints a one-line summary and exits 0, or names the first broken,
        missing or reordered record (file:line: reason) and exits 1. Exit 2 on usage errors.
        --no-rotated checks PATH alone (it may name a rotated file, e.g. one written under an earlier chain key:
        kekd starts a new chain, in a new file, only with --audit-new-chain).

        The chain cannot show records cut off the END of the log: a shortened log is still a valid chain and plain
        verify passes. Compare it with what an off-node witness (Prometheus scraping kekd) saw:
          --expect-seq N      the log must still contain seq N (kekd_audit_last_seq at some earlier time)
          --expect-head HEX   ... and a record whose chain value starts with HEX (kekd_audit_chain_head_info's
                              head label, 8-64 hex digits); with --expect-seq, the record at seq N
        Either failing exits 1 with a one-line reason naming the last seq seen.

        The chain key is the one kekd used:
          --audit-hmac-key-file F  the file given to kekd's --audit-hmac-key-file: 32 or more raw bytes, or
                                   hex (64+ digits) or base64 text of 32 or more bytes; must be mode 0600/0400
          --key-file F             the local backend's key file (the chain key is derived from it with HKDF)
        """

    static func run(_ args: [String]) -> Int32 {
        guard let sub = args.first else {
            printError("audit: missing subcommand\n\n\(help)")
            return ExitCode.usage
        }
        switch sub {
        case "verify": return verify(Array(args.dropFirst()))
        case "--help", "-h", "help":
            print(help)
            return ExitCode.ok
        default:
            printError("audit: unknown subcommand \(sub)\n\n\(help)")
            return ExitCode.usage
        }
    }

    static func verify(_ args: [String]) -> Int32 {
        runCommand(args, help: help) { args in
            let parsed = try Flags(args, valueFlags: ["audit-hmac-key-file", "key-file", "expect-seq", "expect-head"],
                                   switchFlags: ["no-rotated"])
            guard parsed.positionals.count == 1, let path = parsed.positionals.first else {
                throw UsageError(message: "audit verify needs exactly one PATH")
            }
            let witness = try witness(parsed)
            var key = try hmacKey(parsed)
            defer { wipe(&key) }
            func run(_ key: [UInt8]) -> AuditVerificationReport {
                parsed.has("no-rotated")
                    ? AuditVerifier.verify(files: [path], hmacKey: key, witness: witness)
                    : AuditVerifier.verify(path: path, hmacKey: key, witness: witness)
            }
            let report = run(key)
            if report.ok {
                print(report.summary)
                return ExitCode.ok
            }
            // Logs written before the upgrade under a first-format key file used the first release's chain key.
            if let keyFile = parsed.value("key-file"), var earlier = try? KeyFileStore.load(path: keyFile).file.firstReleaseLegacyAuditHMACKey() {
                defer { wipe(&earlier) }
                let retried = run(earlier)
                if retried.ok {
                    print(retried.summary + " (with the chain key a first-release kekd derived from this first-format key)")
                    return ExitCode.ok
                }
            }
            printError(report.summary)
            return ExitCode.failure
        }
    }

    private static func witness(_ parsed: Flags) throws(UsageError) -> AuditWitness? {
        let seqText = parsed.value("expect-seq"), headText = parsed.value("expect-head")
        guard seqText != nil || headText != nil else { return nil }
        var witness = AuditWitness()
        if let seqText {
            guard let seq = UInt64(seqText), seq >= 1 else { throw UsageError(message: "--expect-seq must be a seq number ≥ 1, got \(seqText.prefix(40))") }
            witness.seq = seq
        }
        if let headText {
            guard (8...64).contains(headText.utf8.count), headText.utf8.allSatisfy({ $0 < 0x80 && Character(Unicode.Scalar($0)).isHexDigit }) else {
                throw UsageError(message: "--expect-head must be 8 to 64 hex digits, got \(headText.prefix(70))")
            }
            witness.headHex = headText.lowercased()
        }
        return witness
    }

    private static func hmacKey(_ parsed: Flags) throws -> [UInt8] {
        switch (parsed.value("audit-hmac-key-file"), parsed.value("key-file")) {
        case (let file?, nil):
            return try AuditHMACKeyFile.load(path: file)
        case (nil, let keyFile?):
            do {
                return try FileKeyBackend.auditHMACKey(keyFilePath: keyFile)
            } catch {
                throw AuditError("cannot derive the audit HMAC key from \(keyFile): \(error.message)")
            }
        case (.some, .some):
            throw UsageError(message: "give either --audit-hmac-key-file or --key-file, not both")
        case (nil, nil):
            throw UsageError(message: "the chain key is needed: --audit-hmac-key-file F or --key-file F")
        }
    }
}
