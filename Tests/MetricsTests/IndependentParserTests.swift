// kekd's /metrics output read by the reference parser (Python prometheus_client), not by our own code.
import Foundation
import Testing
@testable import Metrics
import PrometheusParser

private let python = ProcessInfo.processInfo.environment["KEKD_PYTHON"]

private func pythonHasPrometheusClient() -> Bool {
    guard let python else { return false }
    return (try? runPython(python, ["-c", "import prometheus_client.parser"]).status) == 0
}

private func runPython(_ python: String, _ arguments: [String]) throws -> (status: Int32, output: Data) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: python)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, output)
}

private let parseScript = """
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(open(sys.argv[1], encoding="utf-8").read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"""

@Test(.enabled(if: pythonHasPrometheusClient(), "needs KEKD_PYTHON with the prometheus_client package"))
func prometheusClientParsesTheExposition() throws {
    let metrics = ExpositionFormatTests.busyMetrics()
    let awkwardKeyID = "k\"1\\x\ny"
    metrics.setKeyID(awkwardKeyID)
    for s in [0.000_02, 0.3, 4.0] {
        metrics.callStarted(op: .status)
        metrics.callFinished(op: .status, code: .ok, seconds: s)
    }
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("kekd-metrics-\(UUID().uuidString).txt")
    try metrics.render().write(to: file, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: file) }

    let result = try runPython(try #require(python), ["-c", parseScript, file.path])
    #expect(result.status == 0, "prometheus_client rejected the exposition")
    let families = try #require(JSONSerialization.jsonObject(with: result.output) as? [String: [String: Any]])

    // prometheus_client names counter families without the _total suffix.
    for (name, type) in ExpositionFormatTests.requiredFamilies {
        let family = type == "counter" && name.hasSuffix("_total") ? String(name.dropLast(6)) : name
        #expect(families[family]?["type"] as? String == type, "family \(family)")
    }
    func samples(_ family: String) -> [(name: String, labels: [String: String], value: Double)] {
        (families[family]?["samples"] as? [[Any]] ?? []).compactMap { s in
            guard s.count == 3, let n = s[0] as? String, let l = s[1] as? [String: String],
                  let v = (s[2] as? NSNumber)?.doubleValue else { return nil }
            return (n, l, v)
        }
    }
    #expect(samples("kekd_key_info").map(\.labels) == [["key_id": awkwardKeyID]])
    #expect(samples("kekd_grpc_requests").contains {
        $0.name == "kekd_grpc_requests_total" && $0.labels == ["op": "Encrypt", "code": "OK"] && $0.value == 1
    })
    let statusBuckets = samples("kekd_grpc_request_duration_seconds")
        .filter { $0.name.hasSuffix("_bucket") && $0.labels["op"] == "Status" }
    #expect(statusBuckets.last?.labels["le"] == "+Inf")
    #expect(statusBuckets.last?.value == 3)
    #expect(statusBuckets.first { $0.labels["le"] == "0.5" }?.value == 2)
}
