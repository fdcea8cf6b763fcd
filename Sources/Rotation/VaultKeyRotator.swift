// Vault Transit rotation: `transit/keys/NAME/rotate` makes the new version; every kekd starts encrypting under it at
// its next key poll (no file to copy, no separate promote). Retiring raises min_decryption_version to the new one.
import KMS
import Vault

public struct VaultKeyRotator: KeyRotator {
    let admin: TransitAdmin
    public var backend: String { "vault" }

    public init(admin: TransitAdmin) { self.admin = admin }

    private func call<T>(_ what: String, _ body: () throws(KMSError) -> T) throws(RotationError) -> T {
        do { return try body() } catch { throw RotationError("Vault \(what): \(error.message)") }
    }

    private func version(of keyID: String, _ info: TransitKeyInfo) throws(RotationError) -> Int {
        guard let version = admin.version(ofKeyID: keyID, info: info) else {
            throw RotationError("key_id \(keyID) is not a version of Vault key \(admin.configuration.transitMount)/\(admin.configuration.keyName) "
                                + "(do the --vault-* flags match kekd's?)")
        }
        return version
    }

    public func stage(oldKeyID: String, log: (String) -> Void) throws(RotationError) -> String {
        var info = try call("read key") { () throws(KMSError) in try admin.readKey() }
        let old = try version(of: oldKeyID, info)
        if info.latestVersion > old {
            log("Vault key already has version \(info.latestVersion), newer than kekd's \(old): not rotating again")
        } else {
            try call("rotate") { () throws(KMSError) in try admin.rotate() }
            info = try call("read key") { () throws(KMSError) in try admin.readKey() }
            log("rotated Vault key \(admin.configuration.keyName): version \(info.latestVersion)")
        }
        return admin.keyID(version: info.latestVersion, info: info)
    }

    public func distribute(log: (String) -> Void) throws(RotationError) {}

    public func promote(newKeyID: String, log: (String) -> Void) throws(RotationError) {
        log("every kekd encrypts under the new Vault version after its next key poll (--vault-key-poll-interval)")
    }

    public func retire(oldKeyID: String, newKeyID: String, log: (String) -> Void) throws(RotationError) {
        let info = try call("read key") { () throws(KMSError) in try admin.readKey() }
        let new = try version(of: newKeyID, info)
        if info.minDecryptionVersion >= new {
            log("Vault key min_decryption_version is already \(info.minDecryptionVersion)")
            return
        }
        try call("config") { () throws(KMSError) in try admin.setMinDecryptionVersion(new) }
        log("raised Vault key \(admin.configuration.keyName) min_decryption_version to \(new)")
    }

    public func retireCommand(oldKeyID: String, newKeyID: String) -> String {
        let info = try? admin.readKey()
        let version = info.flatMap { admin.version(ofKeyID: newKeyID, info: $0) }.map(String.init) ?? "NEW_VERSION"
        return "vault write \(admin.configuration.transitMount)/keys/\(admin.configuration.keyName)/config min_decryption_version=\(version)"
    }
}
