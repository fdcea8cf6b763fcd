import Dispatch
import Foundation
import Synchronization
import Testing
import GRPC
import HTTP2
@testable import Metrics
import PrometheusParser

@Suite struct ExpositionFormatTests {
    static let requiredFamilies = [
        "kekd_grpc_requests_total": "counter", "kekd_grpc_request_duration_seconds": "histogram",
        "kekd_grpc_requests_in_flight": "gauge", "kekd_connections": "gauge", "kekd_connections_accepted_total": "counter",
        "kekd_http2_protocol_errors_total": "counter", "kekd_backend_requests_total": "counter",
        "kekd_backend_request_duration_seconds": "histogram", "kekd_backend_cache_requests_total": "counter",
        "kekd_key_info": "gauge", "kekd_audit_records_total": "counter", "kekd_audit_queue_depth": "gauge",
        "kekd_process_resident_memory_bytes": "gauge", "kekd_process_open_fds": "gauge",
        "kekd_build_info": "gauge", "kekd_process_start_time_seconds": "gauge",
        "kekd_audit_queue_capacity": "gauge", "kekd_process_max_fds": "gauge",
        "kekd_audit_last_seq": "gauge", "kekd_audit_chain_head_info": "gauge",
        "kekd_key_file_valid": "gauge", "kekd_key_file_reload_failures_total": "counter",
    ]

    static func busyMetrics() -> KekdMetrics {
        let m = KekdMetrics(version: "0.1.0", backend: "file")
        m.callStarted(op: .encrypt)
        m.callFinished(op: .encrypt, code: .ok, seconds: 0.000_03)
        m.callStarted(op: .decrypt)
        m.callFinished(op: .decrypt, code: .invalidArgument, seconds: 0.002)
        m.callStarted(op: .status)
        m.connectionOpened()
        m.protocolError(.enhanceYourCalm)
        m.backendCall(op: "encrypt", result: "ok", seconds: 0.000_01)
        m.cache(hit: true)
        m.cache(hit: false)
        m.cache(hit: false)
        m.setKeyID("kek-1")
        m.setAuditStatsProvider { AuditFigures(written: 7, dropped: 2, failed: 1, queueDepth: 3, queueCapacity: 8192) }
        m.setAuditChainHeadProvider { (lastSeq: 41, headHex: "00ff00ff00ff00ff") }
        m.setKeyFileHealthProvider { (valid: false, rejectedReloads: 2) }
        return m
    }

    @Test func chainHeadAndKeyFileHealthAreExported() {
        let text = Self.busyMetrics().render()
        #expect(text.contains("\nkekd_audit_last_seq 41\n"))
        #expect(text.contains("\nkekd_audit_chain_head_info{head=\"00ff00ff00ff00ff\"} 1\n"))
        #expect(text.contains("\nkekd_key_file_valid 0\n"))
        #expect(text.contains("\nkekd_key_file_reload_failures_total 2\n"))
        // Without providers (Vault backend: no key file) the families are absent, not zero.
        let bare = KekdMetrics(version: "0.1.0", backend: "vault").render()
        #expect(!bare.contains("kekd_key_file_valid") && !bare.contains("kekd_audit_last_seq"))
    }

    @Test func everyLineIsStrictlyWellFormed() throws {
        let parsed = try ExpositionParser.parse(Self.busyMetrics().render())
        for (family, type) in Self.requiredFamilies {
            #expect(parsed.types[family] == type, "family \(family)")
            #expect(parsed.helps[family].map { !$0.isEmpty } == true, "help of \(family)")
        }
        #expect(parsed.types.keys.allSatisfy { $0.hasPrefix("kekd_") })
        // OpenMetrics parsers drop a counter's `_total`: that name must not be another family's.
        for (name, type) in parsed.types where type == "counter" {
            #expect(name.hasSuffix("_total"), "counter \(name)")
            #expect(parsed.types[String(name.dropLast("_total".count))] == nil, "\(name) collides")
        }
    }

    @Test func valuesReflectObservations() throws {
        let p = try ExpositionParser.parse(Self.busyMetrics().render())
        #expect(p.value("kekd_grpc_requests_total", ["op": "Encrypt", "code": "OK"]) == 1)
        #expect(p.value("kekd_grpc_requests_total", ["op": "Decrypt", "code": "INVALID_ARGUMENT"]) == 1)
        #expect(p.value("kekd_grpc_requests_total", ["op": "Status", "code": "OK"]) == 0)   // pre-declared
        #expect(p.value("kekd_grpc_requests_in_flight") == 1)   // Status started, never finished
        #expect(p.value("kekd_connections") == 1)
        #expect(p.value("kekd_connections_accepted_total") == 1)
        #expect(p.value("kekd_http2_protocol_errors_total", ["kind": "enhance_your_calm"]) == 1)
        #expect(p.value("kekd_backend_requests_total", ["op": "encrypt", "result": "ok"]) == 1)
        #expect(p.value("kekd_backend_request_duration_seconds_count", ["op": "encrypt"]) == 1)
        #expect(p.value("kekd_backend_cache_requests_total", ["result": "hit"]) == 1)
        #expect(p.value("kekd_backend_cache_requests_total", ["result": "miss"]) == 2)
        #expect(p.value("kekd_key_info", ["key_id": "kek-1"]) == 1)
        #expect(p.value("kekd_audit_records_total", ["result": "written"]) == 7)
        #expect(p.value("kekd_audit_records_total", ["result": "dropped"]) == 2)
        #expect(p.value("kekd_audit_queue_depth") == 3)
        #expect(p.value("kekd_audit_records_total", ["result": "failed"]) == 1)
        #expect(p.value("kekd_audit_queue_capacity") == 8192)
        // The file backend has no Vault figures.
        #expect(p.values("kekd_vault_circuit_open").isEmpty)
        #expect(p.value("kekd_build_info", ["version": "0.1.0", "backend": "file", "swift": "6"]) == 1)
    }

    @Test func vaultFiguresAreExportedWhenProvided() throws {
        let m = KekdMetrics(version: "1", backend: "vault")
        m.setVaultStateProvider { VaultFigures(circuitOpen: true, tokenExpiry: 1_700_000_000, tokenTTL: 3600) }
        let p = try ExpositionParser.parse(m.render())
        #expect(p.types["kekd_vault_circuit_open"] == "gauge")
        #expect(p.value("kekd_vault_circuit_open") == 1)
        #expect(p.value("kekd_vault_token_expiry_timestamp_seconds") == 1_700_000_000)
        #expect(p.value("kekd_vault_token_ttl_seconds") == 3600)
        // A token that never expires has no expiry series (an alert on it must not fire).
        m.setVaultStateProvider { VaultFigures(circuitOpen: false, tokenExpiry: nil, tokenTTL: nil) }
        let q = try ExpositionParser.parse(m.render())
        #expect(q.value("kekd_vault_circuit_open") == 0)
        #expect(q.values("kekd_vault_token_expiry_timestamp_seconds").isEmpty)
        #expect(q.values("kekd_vault_token_ttl_seconds").isEmpty)
    }

    @Test func fileDescriptorLimitIsTheSoftRlimit() throws {
        var limit = rlimit()
        #expect(getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0)
        let p = try ExpositionParser.parse(KekdMetrics(version: "1", backend: "file").render())
        // Unlimited (all ones) is not a limit an alert can compare against: no series then.
        #expect(p.value("kekd_process_max_fds") == (limit.rlim_cur == rlim_t.max ? nil : Double(limit.rlim_cur)))
    }

    @Test func memoryLimitComesFromTheCgroupV2MemoryMax() throws {
        let root = NSTemporaryDirectory() + "kekd-cgroup-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        func write(_ path: String, _ text: String) throws {
            try FileManager.default.createDirectory(atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: root + path, atomically: true, encoding: .utf8)
        }
        try write("/proc/self/cgroup", "0::/system.slice/kekd.service\n")
        try write("/sys/fs/cgroup/system.slice/kekd.service/memory.max", "268435456\n")
        #expect(ProcessStats.memoryLimitBytes(root: root) == 268_435_456)
        try write("/sys/fs/cgroup/system.slice/kekd.service/memory.max", "max\n")
        #expect(ProcessStats.memoryLimitBytes(root: root) == nil)
        // Inside a container's cgroup namespace the path is "/".
        try write("/proc/self/cgroup", "0::/\n")
        try write("/sys/fs/cgroup/memory.max", "134217728\n")
        #expect(ProcessStats.memoryLimitBytes(root: root) == 134_217_728)
        // cgroup v1 only: no "0::" line, no limit read.
        try write("/proc/self/cgroup", "4:memory:/x\n1:cpu:/\n")
        #expect(ProcessStats.memoryLimitBytes(root: root) == nil)
    }

    @Test func onlyTheCurrentKeyIsExported() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        #expect(try ExpositionParser.parse(m.render()).values("kekd_key_info").isEmpty)
        m.setKeyID("old")
        m.setKeyID("new")
        let p = try ExpositionParser.parse(m.render())
        #expect(p.values("kekd_key_info").count == 1)
        #expect(p.value("kekd_key_info", ["key_id": "new"]) == 1)
    }

    @Test func histogramBucketsAreCumulativeMonotoneAndPlaceValuesCorrectly() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        let observations = [0.000_005, 0.000_01, 0.000_3, 0.000_3, 0.04, 2.9, 3.5, 100]
        for s in observations {
            m.callStarted(op: .decrypt)
            m.callFinished(op: .decrypt, code: .ok, seconds: s)
        }
        let p = try ExpositionParser.parse(m.render())
        let buckets = p.samples
            .filter { $0.name == "kekd_grpc_request_duration_seconds_bucket" && $0.labels["op"] == "Decrypt" }
        let bounds = buckets.compactMap { ExpositionParser.parseNumber($0.labels["le"] ?? "") }
        #expect(bounds.first == 0.000_01)
        #expect(bounds.last == .infinity)
        #expect(bounds.contains(3))
        #expect(zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 }, "le strictly increasing")
        let counts = buckets.map(\.value)
        #expect(zip(counts, counts.dropFirst()).allSatisfy { $0 <= $1 }, "cumulative counts never decrease")
        // Upper bounds are inclusive: 10 µs falls in le="1e-05".
        for bound in bounds {
            let expected = Double(observations.filter { $0 <= bound }.count)
            #expect(buckets.first { ExpositionParser.parseNumber($0.labels["le"] ?? "") == bound }?.value == expected,
                    "bucket le=\(bound)")
        }
        #expect(p.value("kekd_grpc_request_duration_seconds_count", ["op": "Decrypt"]) == Double(observations.count))
        let sum = try #require(p.value("kekd_grpc_request_duration_seconds_sum", ["op": "Decrypt"]))
        #expect(abs(sum - observations.reduce(0, +)) < 1e-6)
    }

    @Test func labelValuesAreEscaped() throws {
        let m = KekdMetrics(version: "v\"1\\", backend: "file")
        let awkward = "a\"b\\c\nd"
        m.setKeyID(awkward)
        let text = m.render()
        #expect(text.contains(#"kekd_key_info{key_id="a\"b\\c\nd"} 1"#))
        let p = try ExpositionParser.parse(text)
        #expect(p.value("kekd_key_info", ["key_id": awkward]) == 1)
        #expect(p.value("kekd_build_info", ["version": "v\"1\\", "backend": "file", "swift": "6"]) == 1)
    }

    @Test func helpTextEscapesBackslashAndNewline() {
        #expect(PrometheusTextWriter.escapeHelp("a\\b\nc\"") == "a\\\\b\\nc\"")
    }

    @Test func opLabelIsBoundedAndCodesAreNamed() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        for op: KekdMetrics.Op in [.other, .other, .decrypt] {
            m.callStarted(op: op)
            m.callFinished(op: op, code: .unimplemented, seconds: 0.001)
        }
        m.callStarted(op: .encrypt)
        m.callFinished(op: .encrypt, code: .unknown, seconds: 0.001)
        let p = try ExpositionParser.parse(m.render())
        #expect(Set(p.samples.compactMap { $0.labels["op"] }).isSubset(of: ["Status", "Encrypt", "Decrypt", "other"]))
        #expect(p.value("kekd_grpc_requests_total", ["op": "other", "code": "UNIMPLEMENTED"]) == 2)
        #expect(p.value("kekd_grpc_requests_total", ["op": "Decrypt", "code": "UNIMPLEMENTED"]) == 1)
        #expect(p.value("kekd_grpc_requests_total", ["op": "Encrypt", "code": "UNKNOWN"]) == 1)
    }

    @Test func stringLabelledSeriesHaveBoundedCardinality() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        for i in 0..<100 { m.backendCall(op: "op_\(i)", result: "ok", seconds: 0.001) }
        m.backendCall(op: String(repeating: "x", count: 10_000), result: "ok", seconds: 0.001)
        let p = try ExpositionParser.parse(m.render())
        let series = p.samples.filter { $0.name == "kekd_backend_requests_total" }
        #expect(series.count <= 33)
        #expect(series.map(\.value).reduce(0, +) == 101)
        #expect(series.allSatisfy { ($0.labels["op"]?.count ?? 0) <= 64 })
    }

    @Test func protocolErrorKindsAreFixedSnakeCaseLabels() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        for kind in ProtocolErrorKind.allCases { m.protocolError(kind) }
        m.protocolError(ProtocolErrorKind(HTTP2ErrorCode.enhanceYourCalm))
        let p = try ExpositionParser.parse(m.render())
        let kinds = p.samples.filter { $0.name == "kekd_http2_protocol_errors_total" }.compactMap { $0.labels["kind"] }
        #expect(kinds.count == ProtocolErrorKind.allCases.count)
        #expect(kinds.allSatisfy { $0.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F } })
        #expect(kinds.contains("enhance_your_calm") && kinds.contains("http_1_1_required") && kinds.contains("request_timeout"))
        #expect(p.value("kekd_http2_protocol_errors_total", ["kind": "enhance_your_calm"]) == 2)
    }

    @Test func processFiguresComeFromProc() throws {
        let p = try ExpositionParser.parse(KekdMetrics(version: "1", backend: "file").render())
        let rss = try #require(p.value("kekd_process_resident_memory_bytes"))
        #expect(rss > 1_000_000 && rss < 8e9)
        let fds = try #require(p.value("kekd_process_open_fds"))
        #expect(fds >= 3)   // stdin, stdout, stderr at least
        let start = try #require(p.value("kekd_process_start_time_seconds"))
        let now = Date().timeIntervalSince1970
        #expect(start <= now + 1 && start > now - 86_400 * 30)
    }

    @Test func openFileDescriptorCountFollowsOpens() throws {
        let before = try #require(ProcessStats.openFileDescriptors())
        let fds = (0..<5).map { _ in open("/dev/null", O_RDONLY) }
        defer { fds.forEach { close($0) } }
        #expect(try #require(ProcessStats.openFileDescriptors()) >= before + 5)
    }

    @Test func valuesAreFormattedAsPrometheusFloats() {
        #expect(PrometheusTextWriter.formatValue(1) == "1")
        #expect(PrometheusTextWriter.formatValue(0.25) == "0.25")
        #expect(PrometheusTextWriter.formatValue(.infinity) == "+Inf")
        #expect(PrometheusTextWriter.formatValue(.nan) == "NaN")
        #expect(Double(PrometheusTextWriter.formatValue(0.000_025)) == 0.000_025)
    }
}

@Suite struct ConcurrencyTests {
    @Test func manyThreadsObservingGiveExactTotals() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        let threads = 8, perThread = 20_000
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let op = KekdMetrics.Op.allCases[t % 4]
            for i in 0..<perThread {
                m.callStarted(op: op)
                m.callFinished(op: op, code: i % 10 == 0 ? .unavailable : .ok, seconds: Double(i % 7) * 0.001)
                m.backendCall(op: t % 2 == 0 ? "encrypt" : "decrypt", result: "ok", seconds: 0.000_02)
                m.cache(hit: i % 2 == 0)
                if i % 100 == 0 {
                    m.connectionOpened()
                    m.connectionClosed()
                    m.protocolError(ProtocolErrorKind.allCases[t])
                }
            }
        }
        let p = try ExpositionParser.parse(m.render())
        let perOp = Double(threads / 4 * perThread)
        for op in ["Status", "Encrypt", "Decrypt", "other"] {
            #expect(p.value("kekd_grpc_requests_total", ["op": op, "code": "OK"]) == perOp * 0.9)
            #expect(p.value("kekd_grpc_requests_total", ["op": op, "code": "UNAVAILABLE"]) == perOp * 0.1)
            #expect(p.value("kekd_grpc_request_duration_seconds_count", ["op": op]) == perOp)
            #expect(p.value("kekd_grpc_request_duration_seconds_bucket", ["op": op, "le": "+Inf"]) == perOp)
        }
        #expect(p.value("kekd_grpc_requests_in_flight") == 0)
        #expect(p.value("kekd_connections") == 0)
        #expect(p.value("kekd_connections_accepted_total") == Double(threads * perThread / 100))
        #expect(p.value("kekd_backend_requests_total", ["op": "encrypt", "result": "ok"]) == Double(threads / 2 * perThread))
        #expect(p.value("kekd_backend_cache_requests_total", ["result": "hit"]) == Double(threads * perThread / 2))
        #expect(p.values("kekd_http2_protocol_errors_total").reduce(0, +) == Double(threads * perThread / 100))
    }

    @Test func renderingWhileObservingIsConsistent() throws {
        let m = KekdMetrics(version: "1", backend: "file")
        let done = StopFlag()
        let writer = Thread {
            var i = 0
            while !done.value.load(ordering: .relaxed) {
                m.callStarted(op: .encrypt)
                m.callFinished(op: .encrypt, code: .ok, seconds: Double(i % 50) * 0.0001)
                i += 1
            }
        }
        writer.start()
        defer { done.value.store(true, ordering: .relaxed) }
        for _ in 0..<50 {
            let p = try ExpositionParser.parse(m.render())
            let buckets = p.values("kekd_grpc_request_duration_seconds_bucket", where: ["op": "Encrypt"])
            #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0 <= $1 })
            #expect(buckets.last == p.value("kekd_grpc_request_duration_seconds_count", ["op": "Encrypt"]))
        }
    }
}

final class StopFlag: Sendable {
    let value = Atomic(false)
}
