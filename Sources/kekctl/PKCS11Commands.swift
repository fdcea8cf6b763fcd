// `kekctl pkcs11 init|rotate|list|retire`: the HSM key family's lifecycle, with the key-file commands' safety rules.
// Keys are made on the token (sensitive, non-extractable); nothing here ever sees or prints key bytes or the PIN.
import Audit
import CommandLineFlags
import Crypto
import FoundationEssentials
import Glibc
import KMS
import Locking
import PKCS11

enum PKCS11Commands {
    static let help = """
        usage: kekctl pkcs11 init|rotate|list|retire --pkcs11-module PATH (--pkcs11-token-label L | --pkcs11-slot N)
                             --pkcs11-pin-file PATH --pkcs11-key-label L [flags]

          init     creates key version 1 (object L-v1) on the token; refuses when the family exists
          rotate   creates the next version L-v(N+1); a running kekd encrypts with it after its next rescan
                   (--pkcs11-poll-interval, or SIGHUP); older versions keep decrypting
          list     [--json] [--usage-file PATH | --state-dir DIR]: version, state (primary | active | retired), key_id,
                   object label and, from kekd's usage file, when each was last used
          retire   --key-id ID [--unused-for 720h] [--force] [--usage-file PATH | --state-dir DIR]: renames L-vN to
                   L-vN-retired; kekd then refuses its ciphertexts (FAILED_PRECONDITION). Refuses the primary and,
                   unless --force, a version that decrypted anything within --unused-for (this node's usage data only)

        The keys are AES-256, CKA_TOKEN, sensitive and non-extractable, with a random CKA_ID; the highest version
        that is not retired encrypts.
        """

    static func run(_ args: [String]) -> Int32 {
        guard let sub = args.first, ["init", "rotate", "list", "retire"].contains(sub) else {
            if args.first == "--help" || args.first == "-h" { print(help); return ExitCode.ok }
            writeStandardError("kekctl pkcs11: expected init, rotate, list or retire\n\n\(help)\n")
            return ExitCode.usage
        }
        return runCommand(Array(args.dropFirst()), help: help) { args in
            let arguments = try Flags(args, valueFlags: PKCS11Configuration.flagNames.union(["key-id", "unused-for", "usage-file", "state-dir"]),
                                      switchFlags: ["json", "force"], allowsPositionals: false)
            let configuration: PKCS11Configuration
            do throws(PKCS11Error) {
                configuration = try PKCS11Configuration.parse(arguments.values.filter { PKCS11Configuration.flagNames.contains($0.key) },
                                                              seconds: parseDuration)
            } catch { throw UsageError(message: error.message) }
            let family = try FamilyOnToken(configuration)
            defer { family.token.disconnect() }
            switch sub {
            case "init": return try initFamily(family)
            case "rotate": return try rotate(family)
            case "list": return try list(family, arguments)
            default: return try retire(family, arguments)
            }
        }
    }

    /// A connected token and the family's versions on it.
    struct FamilyOnToken {
        let token: PKCS11Token
        let label: String
        let serial: String
        var versions: [KeyFamilyVersion]

        init(_ configuration: PKCS11Configuration) throws(PKCS11Error) {
            token = try PKCS11Token(configuration: configuration)
            let info = try token.connect()
            label = configuration.keyLabel
            serial = info.serial
            versions = []
            try rescan()
        }

        mutating func rescan() throws(PKCS11Error) {
            let module = token.module, family = label
            versions = try token.withSession(.scan) { (session: UInt) throws(PKCS11Error) in
                try KeyFamily.versions(of: module.findSecretKeys(session), family: family)
            }
        }

        func keyID(_ v: KeyFamilyVersion) -> String { KeyFamily.keyID(tokenSerial: serial, family: label, version: v.version, id: v.id) }

        func create(version: Int) throws(PKCS11Error) -> KeyFamilyVersion {
            let id: [UInt8]
            do { id = try SecureRandom.bytes(16) } catch { throw PKCS11Error(rv: nil, "random CKA_ID: \(error.description)") }
            let module = token.module, objectLabel = KeyFamily.label(family: label, version: version)
            let handle = try token.withSession(.generate) { (session: UInt) throws(PKCS11Error) in
                try module.generateAESKey(session, label: objectLabel, id: id)
            }
            return KeyFamilyVersion(version: version, retired: false, id: id, handle: handle)
        }

        func state(_ v: KeyFamilyVersion) -> String {
            v.retired ? "retired" : (KeyFamily.primary(versions)?.version == v.version ? "primary" : "active")
        }
    }

    static func initFamily(_ family: FamilyOnToken) throws -> Int32 {
        guard family.versions.isEmpty else {
            throw PKCS11Error(rv: nil, "key family \(family.label) already exists on the token (\(family.versions.count) versions; use rotate)")
        }
        let created = try family.create(version: 1)
        print("created \(KeyFamily.label(family: family.label, version: 1)) on token \(family.token.info?.label ?? "?"): version 1 primary, key_id \(family.keyID(created))")
        return ExitCode.ok
    }

    static func rotate(_ family: FamilyOnToken) throws -> Int32 {
        guard let old = KeyFamily.primary(family.versions) else {
            throw PKCS11Error(rv: nil, "no usable version of \(family.label) on the token (use init)")
        }
        let next = (family.versions.map(\.version).max() ?? 0) + 1
        let created = try family.create(version: next)
        print("old key_id: \(family.keyID(old)) (version \(old.version), now active)")
        print("new key_id: \(family.keyID(created)) (version \(next), primary)")
        return ExitCode.ok
    }

    static func list(_ family: FamilyOnToken, _ arguments: Flags) throws -> Int32 {
        var usage: [String: KeyUsageRecord] = [:]
        if let path = try usagePath(arguments) {
            switch loadUsage(path: path) {
            case .missing: break
            case .unreadable(let reason): printError("warning: ignoring usage file \(path): \(reason)")
            case .loaded(let records): usage = records
            }
        }
        let rows = family.versions.reversed().map { v in (v, family.keyID(v), usage[family.keyID(v)]) }
        if arguments.has("json") {
            struct Row: Encodable {
                let version: Int, key_id: String, state: String, label: String
                let last_used_decrypt: String?, last_used_encrypt: String?
            }
            print(try jsonText(rows.map { v, keyID, used in
                Row(version: v.version, key_id: keyID, state: family.state(v), label: KeyFamily.label(family: family.label, version: v.version, retired: v.retired),
                    last_used_decrypt: used?.lastDecrypt.map(KeyFile.rfc3339), last_used_encrypt: used?.lastEncrypt.map(KeyFile.rfc3339))
            }, pretty: true))
        } else {
            let widths = [8, 8, 48, 24, 21, 0]
            print(KeyCommands.columns(["VERSION", "STATE", "KEY_ID", "LABEL", "LAST_DECRYPT", "LAST_ENCRYPT"], widths: widths))
            for (v, keyID, used) in rows {
                print(KeyCommands.columns([String(v.version), family.state(v), keyID, KeyFamily.label(family: family.label, version: v.version, retired: v.retired),
                                           used?.lastDecrypt.map(KeyFile.rfc3339) ?? "-", used?.lastEncrypt.map(KeyFile.rfc3339) ?? "-"], widths: widths))
            }
        }
        return ExitCode.ok
    }

    static func retire(_ family: FamilyOnToken, _ arguments: Flags) throws -> Int32 {
        let keyID = try arguments.required("key-id")
        let window = try KeyCommands.parseDuration(arguments.value("unused-for") ?? "720h")
        guard let version = family.versions.first(where: { family.keyID($0) == keyID }) else {
            throw KMSError(.failedPrecondition, "no version of \(family.label) with key_id \(keyID) on the token (see `kekctl pkcs11 list`)")
        }
        if version.retired {
            print("key version \(version.version) (key_id \(keyID)) was already retired")
            return ExitCode.ok
        }
        if KeyFamily.primary(family.versions)?.version == version.version {
            throw KMSError(.failedPrecondition, "refusing to retire key version \(version.version) (key_id \(keyID)): it is the primary; rotate first")
        }
        let path = try usagePath(arguments)
        let note = try KeyCommands.retirementCheck(what: "key version \(version.version)", keyID: keyID,
                                                   usage: path.map(loadUsage) ?? .missing, usagePath: path ?? "(none given)",
                                                   window: window, force: arguments.has("force"), now: Date())
        if let note { printError("warning: " + note) }
        let module = family.token.module, label = KeyFamily.label(family: family.label, version: version.version, retired: true)
        try family.token.withSession(.retire) { (session: UInt) throws(PKCS11Error) in
            try module.setLabel(session, version.handle, label: label)
        }
        print("retired key version \(version.version) (key_id \(keyID), object now \(label)); its ciphertexts now fail to decrypt with FAILED_PRECONDITION")
        return ExitCode.ok
    }

    /// --usage-file, or usage.json in --state-dir, or none (no key file to sit next to).
    private static func usagePath(_ arguments: Flags) throws(UsageError) -> String? {
        switch (arguments.value("usage-file"), arguments.value("state-dir")) {
        case (let path?, nil): return path
        case (nil, let folder?): return folder + "/usage.json"
        case (.some, .some): throw UsageError(message: "give either --usage-file or --state-dir, not both")
        case (nil, nil): return nil
        }
    }
}
