// The file backend's rotation: stage a new version, bring the file to every node (the operator's sync command, a
// shared filesystem, or the operator copying it), promote, and later retire, all through KeyFileStore (locked,
// atomic, mode 0600), as `kekctl rotate --stage/--promote` and `kekctl retire` do.
import KMS
import Kubernetes

public struct FileKeyRotator: KeyRotator {
    public enum Distribution: Sendable {
        /// `--sync-command 'CMD {file}'`: run through /bin/sh with {file} replaced by the quoted key file path.
        case command(String)
        /// `--shared-key-file`: every node reads this very file (shared storage).
        case shared
        /// Print what to copy where and wait for the operator to press Enter.
        case manual(confirm: @Sendable () -> Bool)
    }

    public let keyFile: String
    public let distribution: Distribution
    public var backend: String { "file" }

    public init(keyFile: String, distribution: Distribution) { self.keyFile = keyFile; self.distribution = distribution }

    private func update<T>(_ change: (inout KeyFile) throws(KMSError) -> T) throws(RotationError) -> T {
        do { return try KeyFileStore.update(path: keyFile, change) } catch { throw RotationError(error.message) }
    }

    private func version(_ file: KeyFile, _ keyID: String) throws(KMSError) -> KeyVersion {
        guard let v = file.version(withKeyID: keyID) else { throw KMSError(.failedPrecondition, "no key version with key_id \(keyID) in \(keyFile)") }
        return v
    }

    public func stage(oldKeyID: String, log: (String) -> Void) throws(RotationError) -> String {
        let (keyID, staged) = try update { (file: inout KeyFile) throws(KMSError) -> (String, Bool) in
            let old = try version(file, oldKeyID)
            if let newer = file.versions.filter({ $0.version > old.version && $0.state != .retired }).max(by: { $0.version < $1.version }) {
                return (file.keyID(forVersion: newer.version), false)
            }
            let staged = try file.stage()
            return (file.keyID(forVersion: staged.version), true)
        }
        log(staged ? "staged key_id \(keyID) in \(keyFile) (decrypt-only until promoted)" : "key_id \(keyID) was already staged in \(keyFile)")
        return keyID
    }

    public func distribute(log: (String) -> Void) throws(RotationError) {
        switch distribution {
        case .shared:
            log("\(keyFile) is shared by every node (--shared-key-file): nothing to copy")
        case .command(let template):
            let command = template.replacing("{file}", with: shellQuoted(keyFile))
            log("running sync command: \(command)")
            let result: SubprocessResult
            do { result = try Subprocess.run(["/bin/sh", "-c", command], environment: Subprocess.currentEnvironment(), timeout: 600) } catch {
                throw RotationError("sync command: \(error)")
            }
            guard !result.timedOut else { throw RotationError("sync command did not finish within 600s: \(command)") }
            guard result.status == 0 else { throw RotationError("sync command failed with exit status \(result.status): \(command)") }
        case .manual(let confirm):
            log("copy \(keyFile) (mode 0600, owned by kekd's user) to the same path on every other control-plane node now")
            guard confirm() else { throw RotationError("key file not confirmed as copied to every node; copy it, then run the same command to resume") }
        }
    }

    public func promote(newKeyID: String, log: (String) -> Void) throws(RotationError) {
        let changed = try update { (file: inout KeyFile) throws(KMSError) -> Bool in
            let target = try version(file, newKeyID)
            if target.state == .primary { return false }
            try file.promote(version: target.version)
            return true
        }
        log(changed ? "promoted key_id \(newKeyID) to primary in \(keyFile)" : "key_id \(newKeyID) was already the primary in \(keyFile)")
        try distribute(log: log)
    }

    public func retire(oldKeyID: String, newKeyID: String, log: (String) -> Void) throws(RotationError) {
        let changed = try update { (file: inout KeyFile) throws(KMSError) -> Bool in try file.retire(version: try version(file, oldKeyID).version) }
        log(changed ? "retired key_id \(oldKeyID) in \(keyFile)" : "key_id \(oldKeyID) was already retired in \(keyFile)")
        try distribute(log: log)
    }

    public func retireCommand(oldKeyID: String, newKeyID: String) -> String {
        "kekctl retire --key-file \(shellQuoted(keyFile)) --key-id \(oldKeyID)" + {
            if case .command(let template) = distribution { return " && " + template.replacing("{file}", with: shellQuoted(keyFile)) }
            return ""
        }()
    }
}

/// `text` as one POSIX shell word.
public func shellQuoted(_ text: String) -> String {
    let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@%+,")
    if !text.isEmpty, text.allSatisfy({ safe.contains($0) }) { return text }
    return "'" + text.replacing("'", with: "'\\''") + "'"
}
