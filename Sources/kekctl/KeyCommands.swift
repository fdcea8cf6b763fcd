// Key lifecycle subcommands: init, rotate, list, retire, prune. Every write goes through KeyFileStore (locked,
// atomic, mode 0600); nothing here ever prints key bytes.
import Audit
import CommandLineFlags
import FoundationEssentials
import Locking
import Glibc
import KMS

enum KeyCommands {
    static func initKeyFile(_ args: [String]) -> Int32 {
        runCommand(args, help: """
            usage: kekctl init --key-file PATH

            Creates a new key file with one primary key version (32 random bytes), a random file id, mode 0600,
            written atomically. Missing parent folders are created with mode 0700. Refuses to overwrite an existing file.
            """) { args in
            let path = try Flags(args, valueFlags: ["key-file"], allowsPositionals: false).required("key-file")
            try FileKeyBackend.initializeKeyFile(path: path)
            let file = try KeyFileStore.load(path: path).file
            print("created \(path): version 1 primary, key_id \(file.keyID(forVersion: 1))")
            return ExitCode.ok
        }
    }

    static func rotate(_ args: [String]) -> Int32 {
        runCommand(args, help: """
            usage: kekctl rotate --key-file PATH [--stage | --promote KEY_ID]

            Adds a new primary key version and demotes the current primary to active (it still decrypts). A running
            kekd picks the change up within a second (or on SIGHUP) and reports the new key_id in Status; kube-apiserver
            then makes a new DEK seed. Prints the old and the new key_id.

            With several control-plane nodes, rotate in two steps so no node ever meets a ciphertext under a key it
            does not have yet:
              --stage            add the new version as active (decrypt-only); copy the file to every node
              --promote KEY_ID   then make that staged version the primary (on every node, or copy again)
            """) { args in
            let arguments = try Flags(args, valueFlags: ["key-file", "promote"], switchFlags: ["stage"], allowsPositionals: false)
            let path = try arguments.required("key-file")
            let promoteKeyID = arguments.value("promote")
            if arguments.has("stage") {
                guard promoteKeyID == nil else { throw UsageError(message: "--stage and --promote exclude each other") }
                let (staged, file) = try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in
                    (try file.stage(), file)
                }
                print("staged key_id: \(file.keyID(forVersion: staged.version)) (version \(staged.version), active: decrypts only)")
                print("primary unchanged: \(file.primary.map { file.keyID(forVersion: $0.version) } ?? "-")")
                return ExitCode.ok
            }
            let (old, new, file) = try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) in
                let (old, new): (KeyVersion, KeyVersion)
                if let promoteKeyID {
                    guard let target = file.version(withKeyID: promoteKeyID) else {
                        throw KMSError(.failedPrecondition, "no key version with key_id \(promoteKeyID) in \(path) (see `kekctl list`)")
                    }
                    (old, new) = try file.promote(version: target.version)
                } else {
                    (old, new) = try file.rotate()
                }
                return (old, new, file)
            }
            print("old key_id: \(file.keyID(forVersion: old.version)) (version \(old.version), now active)")
            print("new key_id: \(file.keyID(forVersion: new.version)) (version \(new.version), primary)")
            return ExitCode.ok
        }
    }

    static func list(_ args: [String]) -> Int32 {
        runCommand(args, help: """
            usage: kekctl list --key-file PATH [--json] [--usage-file PATH | --state-dir DIR]

            Lists the key versions: version, state (primary | active | retired), key_id, creation time, and when each
            was last used to encrypt/decrypt if kekd's usage file exists (--usage-file, or usage.json in --state-dir
            (kekd's --state-dir, e.g. /var/lib/kekd), default: usage.json next to the key file; the data is this
            node's only). --json prints an array of objects with
            version, key_id, state, created and, when known, last_used_encrypt and last_used_decrypt. Never prints
            key bytes.
            """) { args in
            let arguments = try Flags(args, valueFlags: ["key-file", "usage-file", "state-dir"], switchFlags: ["json"], allowsPositionals: false)
            let path = try arguments.required("key-file")
            let usagePath = try usageFilePath(arguments, keyFile: path)
            let file = try KeyFileStore.load(path: path).file
            var usage: [String: KeyUsageRecord] = [:]
            switch loadUsage(path: usagePath) {
            case .missing: break
            case .unreadable(let reason): printError("warning: ignoring usage file \(usagePath): \(reason)")
            case .loaded(let records): usage = records
            }
            let rows = file.versions.sorted { $0.version > $1.version }.map { v in
                (version: v, keyID: file.keyID(forVersion: v.version), usage: usage[file.keyID(forVersion: v.version)])
            }
            if arguments.has("json") {
                struct Row: Encodable {
                    let version: UInt32, key_id: String, state: String, created: String
                    let last_used_decrypt: String?, last_used_encrypt: String?
                }
                let objects = rows.map { row in
                    Row(version: row.version.version, key_id: row.keyID, state: row.version.state.rawValue,
                        created: row.version.created, last_used_decrypt: row.usage?.lastDecrypt.map(KeyFile.rfc3339),
                        last_used_encrypt: row.usage?.lastEncrypt.map(KeyFile.rfc3339))
                }
                print(try jsonText(objects, pretty: true))
            } else {
                let dash = "-"
                print(columns(["VERSION", "STATE", "KEY_ID", "CREATED", "LAST_DECRYPT", "LAST_ENCRYPT"]))
                for row in rows {
                    print(columns([String(row.version.version), row.version.state.rawValue, row.keyID, row.version.created,
                                   row.usage?.lastDecrypt.map(KeyFile.rfc3339) ?? dash,
                                   row.usage?.lastEncrypt.map(KeyFile.rfc3339) ?? dash]))
                }
            }
            return ExitCode.ok
        }
    }

    static func retire(_ args: [String]) -> Int32 {
        runCommand(args, help: """
            usage: kekctl retire --key-file PATH --key-id ID [--unused-for 720h] [--force] [--usage-file PATH | --state-dir DIR]

            Retires a key version: kekd then refuses to decrypt its ciphertexts (FAILED_PRECONDITION). Refuses the
            primary. When kekd's usage file exists (--usage-file, or usage.json in --state-dir (kekd's --state-dir,
            e.g. /var/lib/kekd), default: usage.json next to the key file), refuses a version that decrypted anything
            within --unused-for (default 720h;
            units d, h, m, s) unless --force. The usage data is this node's only: check every control-plane node (and
            re-encrypt all Secrets) before retiring.
            """) { args in
            let arguments = try Flags(args, valueFlags: ["key-file", "key-id", "unused-for", "usage-file", "state-dir"], switchFlags: ["force"],
                                      allowsPositionals: false)
            let path = try arguments.required("key-file")
            let keyID = try arguments.required("key-id")
            let window = try parseDuration(arguments.value("unused-for") ?? "720h")
            let force = arguments.has("force")
            let usagePath = try usageFilePath(arguments, keyFile: path)
            let usage = loadUsage(path: usagePath)
            let now = Date()
            let outcome = try KeyFileStore.update(path: path) { (file: inout KeyFile) throws(KMSError) -> (version: UInt32, changed: Bool, note: String?) in
                guard let version = file.version(withKeyID: keyID) else {
                    throw KMSError(.failedPrecondition, "no key version with key_id \(keyID) in \(path) (see `kekctl list`)")
                }
                if version.state == .primary {
                    throw KMSError(.failedPrecondition, "refusing to retire key version \(version.version) (key_id \(keyID)): it is the primary; rotate first")
                }
                if version.state == .retired { return (version.version, false, nil) }
                let note = try retirementCheck(what: "key version \(version.version)", keyID: keyID, usage: usage, usagePath: usagePath,
                                               window: window, force: force, now: now)
                return (version.version, try file.retire(version: version.version), note)
            }
            if let note = outcome.note { printError("warning: " + note) }
            if outcome.changed {
                print("retired key version \(outcome.version) (key_id \(keyID)); its ciphertexts now fail to decrypt with FAILED_PRECONDITION")
            } else {
                print("key version \(outcome.version) (key_id \(keyID)) was already retired")
            }
            return ExitCode.ok
        }
    }

    static func prune(_ args: [String]) -> Int32 {
        runCommand(args, help: """
            usage: kekctl prune --key-file PATH

            Removes retired key versions from the key file for good: their ciphertexts can never be decrypted again.
            """) { args in
            let path = try Flags(args, valueFlags: ["key-file"], allowsPositionals: false).required("key-file")
            let (dropped, file) = try KeyFileStore.update(path: path) { (file: inout KeyFile) in (file.prune(), file) }
            if dropped.isEmpty { print("nothing to prune: no retired key versions") }
            for v in dropped { print("pruned key version \(v.version) (key_id \(file.keyID(forVersion: v.version)))") }
            return ExitCode.ok
        }
    }

    // MARK: Helpers

    /// --usage-file, else usage.json in --state-dir, else usage.json next to the key file. Only paths the caller
    /// named or implied: never a host default such as /var/lib/kekd, which would make the result depend on the
    /// machine kekctl happens to run on.
    private static func usageFilePath(_ arguments: Flags, keyFile: String) throws(UsageError) -> String {
        switch (arguments.value("usage-file"), arguments.value("state-dir")) {
        case (let path?, nil): return path
        case (nil, let folder?): return folder + "/usage.json"
        case (.some, .some): throw UsageError(message: "give either --usage-file or --state-dir, not both")
        case (nil, nil):
            return parentFolder(of: keyFile) + "/usage.json"
        }
    }

    static func columns(_ fields: [String], widths: [Int] = [8, 8, 32, 21, 21, 0]) -> String {
        return zip(fields, widths).map { $1 == 0 ? $0 : padded($0, to: $1) }
            .joined(separator: " ")
    }

    /// A duration flag's value in seconds (`parseDuration`'s grammar), or kekctl's usage error naming it.
    static func parseDuration(_ text: String) throws(UsageError) -> TimeInterval {
        guard let seconds = CommandLineFlags.parseDuration(text) else {
            throw UsageError(message: "invalid duration \"\(text)\" (use e.g. 720h, 30d, 90m)")
        }
        return seconds
    }

    /// The usage rule shared by every retire command: refuses a key_id that decrypted within `window` (or unreadable
    /// usage data) unless `force`; returns a warning to print, if any.
    static func retirementCheck(what: String, keyID: String, usage: UsageData, usagePath: String, window: TimeInterval,
                                force: Bool, now: Date) throws(KMSError) -> String? {
        switch usage {
        case .missing:
            return "no usage data at \(usagePath): cannot tell whether key_id \(keyID) still decrypts anything"
        case .unreadable(let reason):
            guard force else {
                throw KMSError(.failedPrecondition, "usage file \(usagePath) is unreadable (\(reason)); fix it, or pass --force to retire without checking")
            }
            return "usage file \(usagePath) is unreadable (\(reason)); retiring because of --force"
        case .loaded(let records):
            guard let last = records[keyID]?.lastDecrypt, now.timeIntervalSince(last) < window else { return nil }
            guard force else {
                throw KMSError(.failedPrecondition, "refusing to retire \(what) (key_id \(keyID)): it decrypted something at "
                               + "\(KeyFile.rfc3339(last)), within --unused-for \(formatDuration(window)); re-encrypt the data first or pass --force")
            }
            return "key_id \(keyID) decrypted something at \(KeyFile.rfc3339(last)); retiring because of --force"
        }
    }

    private static func formatDuration(_ seconds: TimeInterval) -> String {
        seconds.truncatingRemainder(dividingBy: 3600) == 0 ? "\(Int(seconds / 3600))h" : "\(Int(seconds))s"
    }
}

enum UsageData {
    case missing
    case unreadable(String)
    case loaded([String: KeyUsageRecord])
}

/// kekd's usage file (written by the audit log; format in Audit's KeyUsage.swift).
func loadUsage(path: String) -> UsageData {
    guard FileManager.default.fileExists(atPath: path) else { return .missing }
    do { return .loaded(try KeyUsageFile.load(path: path)) } catch { return .unreadable("\(error)") }
}
