// The rotation's real adapters where they need no cluster: resource paths, the apiserver metric, the file backend's
// stage/promote/retire through KeyFileStore with a sync command.
import Foundation
import KMS
import Rotation
import Testing

@Suite struct AdapterTests {
    @Test func resourcePaths() throws {
        let secrets = try ResourceKind("secrets")
        #expect(secrets.listPath == "/api/v1/secrets")
        #expect(secrets.path(namespace: "kube-system", name: "a.b") == "/api/v1/namespaces/kube-system/secrets/a.b")
        let widgets = try ResourceKind("widgets.example.com/v1beta1")
        #expect(widgets.listPath == "/apis/example.com/v1beta1/widgets")
        #expect(widgets.path(namespace: nil, name: "w") == "/apis/example.com/v1beta1/widgets/w")
        for bad in ["", "Secrets", "a/b/c", "widgets.example.com", "../x"] {
            #expect(throws: RotationError.self, "\(bad)") { try ResourceKind(bad) }
        }
    }

    @Test func currentKeyIsTheNewestSeriesOfTheProvider() throws {
        let metric = keyIDHashMetric
        let text = """
            # HELP \(metric) [ALPHA] The last time in seconds when a keyID was returned by the Status RPC call.
            # TYPE \(metric) gauge
            \(metric){key_id_hash="sha256:old",provider_name="kekd"} 1.7e+09
            \(metric){key_id_hash="sha256:new",provider_name="kekd"} 1.700000005e+09
            \(metric){key_id_hash="sha256:other",provider_name="vault"} 1.8e+09
            # HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
            # TYPE go_gc_duration_seconds summary
            go_gc_duration_seconds{quantile="0"} 4.1e-05
            go_gc_duration_seconds_sum 0.01
            go_gc_duration_seconds_count 12

            """
        #expect(try KubernetesFleet.currentKeyIDHash(metrics: text, provider: "kekd", apiserver: "a") == "sha256:new")
        #expect(try KubernetesFleet.currentKeyIDHash(metrics: text, provider: "none", apiserver: "a") == nil)
        #expect(throws: RotationError.self) { try KubernetesFleet.currentKeyIDHash(metrics: "garbage\n", provider: "kekd", apiserver: "a") }
    }

    @Test func shellQuoting() {
        #expect(shellQuoted("/etc/kekd/kek.json") == "/etc/kekd/kek.json")
        #expect(shellQuoted("a b'c") == "'a b'\\''c'")
    }

    @Test func fileRotatorStagesOncePromotesRetiresAndSyncs() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("rotator-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/kek file.json"
        try FileKeyBackend.initializeKeyFile(path: path)
        let old = try KeyFileStore.load(path: path).file.primary.map { try KeyFileStore.load(path: path).file.keyID(forVersion: $0.version) }!
        let log = folder + "/synced"
        let rotator = FileKeyRotator(keyFile: path, distribution: .command("cp {file} \(shellQuoted(log))"))
        var lines: [String] = []
        let new = try rotator.stage(oldKeyID: old) { lines.append($0) }
        #expect(try rotator.stage(oldKeyID: old) { lines.append($0) } == new)      // resumed: no second version
        #expect(try KeyFileStore.load(path: path).file.versions.count == 2)
        try rotator.distribute { lines.append($0) }
        #expect(FileManager.default.fileExists(atPath: log))
        try rotator.promote(newKeyID: new) { lines.append($0) }
        try rotator.promote(newKeyID: new) { lines.append($0) }
        let file = try KeyFileStore.load(path: path).file
        #expect(file.primary.map { file.keyID(forVersion: $0.version) } == new)
        try rotator.retire(oldKeyID: old, newKeyID: new) { lines.append($0) }
        #expect(try KeyFileStore.load(path: path).file.version(withKeyID: old)?.state == .retired)
        #expect(try KeyFileStore.load(path: path).file == KeyFileStore.load(path: log).file)
        #expect(rotator.retireCommand(oldKeyID: old, newKeyID: new).hasPrefix("kekctl retire --key-file '\(path)' --key-id \(old) && cp "))
        let failing = FileKeyRotator(keyFile: path, distribution: .command("exit 4 {file}"))
        #expect(throws: RotationError.self) { try failing.distribute { _ in } }
    }
}
