// The audit chain's key at startup. A log whose chain key is gone can never be verified again, and a new key would
// silently start a new chain (hiding whatever happened to the old one), so a missing key next to existing records
// stops kekd unless the operator accepts a new chain with --audit-new-chain.
import Audit
import FoundationEssentials
import Glibc
import Logging
import Server

enum AuditChainKey {
    /// The key in `keyPath`. A missing file is created with a random key when `createWhenFresh` (the Vault backend's
    /// own key in the state folder) and the log has no records yet, or when `newChain` allows it; otherwise exit 5.
    static func load(keyPath: String, auditLog: String, createWhenFresh: Bool, newChain: Bool,
                     logger: Logger) throws(StartupError) -> [UInt8] {
        do {
            if access(keyPath, F_OK) != 0 && errno == ENOENT {
                let hasRecords = auditLog != "-" && hasRecords(auditLog)
                guard newChain || (createWhenFresh && !hasRecords) else {
                    throw StartupError(.audit, hasRecords
                        ? "audit chain key \(keyPath) is missing but the audit log \(auditLog) has records; restore the key, or start a new chain with --audit-new-chain"
                        : "audit chain key \(keyPath) does not exist (--audit-new-chain creates it)")
                }
                if hasRecords || !createWhenFresh {
                    logger.warn("audit chain key missing: creating a new one and starting a new chain (--audit-new-chain)",
                                ["key_file": keyPath, "audit_log": auditLog])
                }
                return try AuditHMACKeyFile.loadOrCreate(path: keyPath)
            }
            return try AuditHMACKeyFile.load(path: keyPath)
        } catch let error as StartupError {
            throw error
        } catch {
            throw StartupError(.audit, "audit log: \(error)")
        }
    }

    /// True when the log or one of its rotated predecessors holds anything.
    static func hasRecords(_ path: String) -> Bool {
        AuditVerifier.filesToVerify(path: path).contains { file in
            var st = stat()
            return stat(file, &st) == 0 && st.st_size > 0
        }
    }
}
