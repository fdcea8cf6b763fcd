// A census of what etcd stores under a prefix: for every object, which key (and storage format) holds it, counted by
// resource, kind, provider and key_id. Read-only; one page of objects in memory at a time; all pages read at one
// etcd revision, so the counts are a consistent snapshot even while the apiserver writes.
import Etcd
import JSON

/// The objects of one resource stored the same way.
public struct CensusGroup: Sendable, Hashable, Comparable {
    public var resource: String
    public var kind: StoredKind
    public var provider: String?
    public var keyID: String?

    public init(resource: String, kind: StoredKind, provider: String? = nil, keyID: String? = nil) {
        self.resource = resource; self.kind = kind; self.provider = provider; self.keyID = keyID
    }

    public static func < (a: CensusGroup, b: CensusGroup) -> Bool {
        if a.resource != b.resource { return a.resource < b.resource }
        if a.kind != b.kind { return a.kind < b.kind }
        if a.provider != b.provider { return (a.provider ?? "") < (b.provider ?? "") }
        return (a.keyID ?? "") < (b.keyID ?? "")
    }

    /// True for objects stored as KMS v2 under `keyID`: what a finished rotation to `keyID` leaves.
    public func isKMSv2(under keyID: String) -> Bool { kind == .kmsV2 && self.keyID == keyID }
}

public struct CensusReport: Sendable, Equatable {
    /// The etcd revision every page was read at.
    public var revision: Int64
    public var counts: [CensusGroup: Int]

    public init(revision: Int64 = 0, counts: [CensusGroup: Int] = [:]) { self.revision = revision; self.counts = counts }

    public var objects: Int { counts.values.reduce(0, +) }
    public var groups: [(group: CensusGroup, count: Int)] { counts.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }

    /// The objects not stored as KMS v2 under `keyID`, in total and by kind (kms-v2 here means: another key_id).
    public func notUnder(keyID: String) -> (count: Int, byKind: [StoredKind: Int]) {
        var byKind: [StoredKind: Int] = [:]
        for (group, count) in counts where !group.isKMSv2(under: keyID) { byKind[group.kind, default: 0] += count }
        return (byKind.values.reduce(0, +), byKind)
    }

    /// `{"objects": N, "groups": [{"resource", "kind", "provider" (or null), "key_id" (or null), "count"}, ...]}`.
    public var json: JSONValue {
        .object([
            "objects": .number(Double(objects)),
            "groups": .array(groups.map { entry in
                .object([
                    "resource": .string(entry.group.resource),
                    "kind": .string(entry.group.kind.rawValue),
                    "provider": entry.group.provider.map(JSONValue.string) ?? .null,
                    "key_id": entry.group.keyID.map(JSONValue.string) ?? .null,
                    "count": .number(Double(entry.count)),
                ])
            }),
        ])
    }
}

public enum Census {
    /// kube-apiserver's default `--etcd-prefix` with the slash its keys continue with.
    public static let defaultPrefix = "/registry/"
    /// Keys per range request: a few MiB of typical Secrets; the client halves it for pages of large values.
    public static let defaultPageSize = 500

    /// Counts every object under `prefix` (only under `prefix + resource + "/"` for each of `resources` when given),
    /// reading `pageSize` keys per request, all at the revision of the first reply. `visit` sees each object's etcd
    /// key and group as it is counted (for listing keys); values are never kept.
    public static func run(client: EtcdClient, prefix: String = defaultPrefix, resources: [String]? = nil,
                           pageSize: Int = defaultPageSize,
                           visit: (_ key: [UInt8], _ group: CensusGroup) -> Void = { _, _ in }) throws(EtcdError) -> CensusReport {
        let base = Array(normalized(prefix: prefix).utf8)
        var ranges: [[UInt8]] = []
        if let resources {
            for resource in Set(resources).sorted() { ranges.append(base + Array(resource.utf8) + [UInt8(ascii: "/")]) }
        } else {
            ranges = [base]
        }
        var report = CensusReport()
        var revision: Int64? = nil
        for start in ranges {
            let read = try client.range(from: start, to: EtcdClient.prefixEnd(start), pageSize: pageSize, revision: revision) { kv in
                let stored = StoredValue.classify(kv.value)
                let group = CensusGroup(resource: StoredValue.resource(ofKey: kv.key, prefix: base) ?? "",
                                        kind: stored.kind, provider: stored.provider, keyID: stored.keyID)
                report.counts[group, default: 0] += 1
                visit(kv.key, group)
            }
            if revision == nil { revision = read }
        }
        report.revision = revision ?? 0
        return report
    }

    /// The prefix with the "/" its keys continue with (`/registry` and `/registry/` read the same keys).
    public static func normalized(prefix: String) -> String {
        prefix.hasSuffix("/") ? prefix : prefix + "/"
    }
}
