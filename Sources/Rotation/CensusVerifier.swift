// The strong proof: read every stored object of the migrated resources straight from etcd (the census) and require
// each to be KMS v2 under the new key_id. When etcd cannot be reached at all, it falls back to the apiservers'
// metrics and says that this is the weaker proof; any other etcd failure (a refused certificate) fails the phase.
import Census
import Etcd

public struct CensusVerifier: MigrationVerifier {
    let client: EtcdClient
    let prefix: String
    let fallback: MigrationVerifier

    public init(client: EtcdClient, prefix: String = Census.defaultPrefix, fallback: MigrationVerifier) {
        self.client = client; self.prefix = prefix; self.fallback = fallback
    }

    /// The census resource (first path component after the prefix, or GROUP/RESOURCE for a grouped one).
    static func censusResource(_ resource: String) -> String {
        guard let kind = try? ResourceKind(resource), let group = kind.group else { return resource }
        return "\(group)/\(kind.name)"
    }

    public func verify(newKeyID: String, resources: [String], log: (String) -> Void) throws(RotationError) -> (method: String, summary: String) {
        let report: CensusReport
        do {
            report = try Census.run(client: client, prefix: prefix, resources: resources.map(Self.censusResource))
        } catch {
            guard error.kind == .unreachable else { throw RotationError("census from etcd failed: \(error.message)") }
            log("etcd not reachable (\(error.message)): falling back to the apiservers' metrics")
            return try fallback.verify(newKeyID: newKeyID, resources: resources, log: log)
        }
        let (stale, byKind) = report.notUnder(keyID: newKeyID)
        guard stale == 0 else {
            let kinds = byKind.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key.rawValue)" }.joined(separator: ", ")
            throw RotationError("census: \(stale) of \(report.objects) stored objects are not KMS v2 under key_id \(newKeyID) (\(kinds)); "
                                + "list them with `kekctl census --list KEY_ID`, then run the same command to resume")
        }
        return ("census", "census: all \(report.objects) stored objects of \(resources.joined(separator: ",")) are KMS v2 under key_id "
                + "\(newKeyID) (read from etcd at revision \(report.revision))")
    }
}
