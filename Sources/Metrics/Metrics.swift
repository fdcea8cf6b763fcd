// kekd's metrics: recorded by the server on every call, rendered for Prometheus by the health endpoint.
import Glibc
import Synchronization

/// Every figure kekd exports, under the `kekd_` prefix. Thread-safe; each observation is a few relaxed atomic
/// adds (plus one short lock for the string-labelled backend and protocol-error series), with no allocation.
public final class KekdMetrics: Sendable {
    /// gRPC method labels. Anything else (unknown paths) is `other`: the raw path is unbounded cardinality.
    static let ops = ["Status", "Encrypt", "Decrypt", "other"]
    /// gRPC status code names, indexed by code number.
    static let codes = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                        "UNAUTHENTICATED"]
    static let unknownCodeIndex = 2

    private let version: String
    private let backendName: String
    private let startTime: Double

    private let requests: [[Counter]]          // [op][code]
    private let requestDurations: [Histogram]  // [op]
    private let inFlight = Atomic<Int>(0)
    private let openConnections = Atomic<Int>(0)
    private let connectionsTotal = Counter()
    private let protocolErrors = BoundedSeries<Counter>(capacity: 32, overflow: LabelKey(first: "other", second: "")) {
        Counter()
    }
    private let backendRequests = BoundedSeries<Counter>(
        capacity: 32, overflow: LabelKey(first: "other", second: "other")) { Counter() }
    private let backendDurations = BoundedSeries<Histogram>(
        capacity: 8, overflow: LabelKey(first: "other", second: "")) { Histogram(.latency) }
    private let cacheHits = Counter()
    private let cacheMisses = Counter()
    private let keyID = Mutex<String>("")
    private let auditStats = Mutex<(@Sendable () -> (written: Int, dropped: Int, queueDepth: Int))?>(nil)

    public init(version: String, backend: String) {
        self.version = version
        self.backendName = backend
        requests = Self.ops.map { _ in Self.codes.map { _ in Counter() } }
        requestDurations = Self.ops.map { _ in Histogram(.latency) }
        startTime = ProcessStats.startTimeSeconds() ?? Self.now()
    }

    // MARK: recording

    public func callStarted(op: String) {
        inFlight.wrappingAdd(1, ordering: .relaxed)
    }

    /// `code` is a gRPC status code name (`OK`, `INVALID_ARGUMENT`, …) or its number; anything else counts as UNKNOWN.
    public func callFinished(op: String, code: String, seconds: Double) {
        inFlight.wrappingSubtract(1, ordering: .relaxed)
        let opIndex = Self.opIndex(op)
        requests[opIndex][Self.codeIndex(code)].add()
        requestDurations[opIndex].observe(seconds: seconds)
    }

    public func connectionOpened() {
        openConnections.wrappingAdd(1, ordering: .relaxed)
        connectionsTotal.add()
    }

    public func connectionClosed() {
        openConnections.wrappingSubtract(1, ordering: .relaxed)
    }

    /// `kind` names the violation (e.g. `rapid_reset`, `flow_control`); at most 32 distinct kinds are kept apart.
    public func protocolError(kind: String) {
        protocolErrors.series(kind).add()
    }

    /// One call to the key backend (`op` e.g. `encrypt`, `decrypt`, `read_key`; `result` e.g. `ok`, `error`).
    public func backendCall(op: String, result: String, seconds: Double) {
        backendRequests.series(op, result).add()
        backendDurations.series(op).observe(seconds: seconds)
    }

    public func cache(hit: Bool) {
        (hit ? cacheHits : cacheMisses).add()
    }

    /// The current primary key_id; only this one is exported (`kekd_key_info{key_id} 1`).
    public func setKeyID(_ keyID: String) {
        self.keyID.withLock { $0 = keyID }
    }

    public func setAuditStatsProvider(_ f: @escaping @Sendable () -> (written: Int, dropped: Int, queueDepth: Int)) {
        auditStats.withLock { $0 = f }
    }

    // MARK: rendering

    public func render() -> String {
        var w = PrometheusTextWriter()
        renderCalls(&w)
        renderConnections(&w)
        renderBackend(&w)
        renderAudit(&w)
        renderProcess(&w)
        return w.output
    }

    private func renderCalls(_ w: inout PrometheusTextWriter) {
        w.family("kekd_grpc_requests_total", .counter, help: "gRPC calls finished, by method and status code.")
        for (opIndex, op) in Self.ops.enumerated() {
            for (codeIndex, code) in Self.codes.enumerated() {
                let value = requests[opIndex][codeIndex].value
                // The OK series of the three KMS methods always exist so rate() works from the first scrape.
                if value > 0 || (codeIndex == 0 && op != "other") {
                    w.sample("kekd_grpc_requests_total", ["op": op, "code": code], value)
                }
            }
        }
        w.family("kekd_grpc_request_duration_seconds", .histogram, help: "gRPC call latency, by method.")
        for (opIndex, op) in Self.ops.enumerated() {
            let snapshot = requestDurations[opIndex].snapshot()
            if snapshot.count > 0 || op != "other" {
                w.histogram("kekd_grpc_request_duration_seconds", labelName: "op", labelValue: op,
                            buckets: .latency, snapshot: snapshot)
            }
        }
        w.family("kekd_grpc_requests_in_flight", .gauge, help: "gRPC calls started and not yet finished.")
        w.sample("kekd_grpc_requests_in_flight", inFlight.load(ordering: .relaxed))
    }

    private func renderConnections(_ w: inout PrometheusTextWriter) {
        w.family("kekd_connections", .gauge, help: "Open client connections on the KMS socket.")
        w.sample("kekd_connections", openConnections.load(ordering: .relaxed))
        w.family("kekd_connections_total", .counter, help: "Client connections accepted on the KMS socket.")
        w.sample("kekd_connections_total", connectionsTotal.value)
        w.family("kekd_http2_protocol_errors_total", .counter, help: "HTTP/2 protocol violations by peers, by kind.")
        for (key, counter) in protocolErrors.all() {
            w.sample("kekd_http2_protocol_errors_total", ["kind": key.first], counter.value)
        }
    }

    private func renderBackend(_ w: inout PrometheusTextWriter) {
        w.family("kekd_backend_requests_total", .counter, help: "Calls to the key backend, by operation and result.")
        for (key, counter) in backendRequests.all() {
            w.sample("kekd_backend_requests_total", ["op": key.first, "result": key.second], counter.value)
        }
        w.family("kekd_backend_request_duration_seconds", .histogram, help: "Key backend call latency, by operation.")
        for (key, histogram) in backendDurations.all() {
            w.histogram("kekd_backend_request_duration_seconds", labelName: "op", labelValue: key.first,
                        buckets: histogram.buckets, snapshot: histogram.snapshot())
        }
        w.family("kekd_backend_cache_requests_total", .counter, help: "Lookups in the backend's key cache.")
        w.sample("kekd_backend_cache_requests_total", ["result": "hit"], cacheHits.value)
        w.sample("kekd_backend_cache_requests_total", ["result": "miss"], cacheMisses.value)
        let currentKeyID = keyID.withLock { $0 }
        w.family("kekd_key_info", .gauge, help: "The key_id kekd currently encrypts with (value always 1).")
        if !currentKeyID.isEmpty {
            w.sample("kekd_key_info", ["key_id": currentKeyID], 1)
        }
    }

    private func renderAudit(_ w: inout PrometheusTextWriter) {
        // Called outside the lock: the provider may take the audit log's own lock.
        guard let provider = auditStats.withLock({ $0 }) else { return }
        let stats = provider()
        w.family("kekd_audit_records_total", .counter, help: "Audit records, by result.")
        w.sample("kekd_audit_records_total", ["result": "written"], stats.written)
        w.sample("kekd_audit_records_total", ["result": "dropped"], stats.dropped)
        w.family("kekd_audit_queue_depth", .gauge, help: "Audit records waiting for the writer.")
        w.sample("kekd_audit_queue_depth", stats.queueDepth)
    }

    private func renderProcess(_ w: inout PrometheusTextWriter) {
        if let rss = ProcessStats.residentMemoryBytes() {
            w.family("kekd_process_resident_memory_bytes", .gauge, help: "Resident set size of the kekd process.")
            w.sample("kekd_process_resident_memory_bytes", rss)
        }
        if let fds = ProcessStats.openFileDescriptors() {
            w.family("kekd_process_open_fds", .gauge, help: "Open file descriptors of the kekd process.")
            w.sample("kekd_process_open_fds", fds)
        }
        w.family("kekd_process_start_time_seconds", .gauge, help: "Start time of the process, Unix seconds.")
        w.sample("kekd_process_start_time_seconds", startTime)
        w.family("kekd_build_info", .gauge, help: "kekd build: version, key backend, Swift language mode.")
        w.sample("kekd_build_info", ["version": version, "backend": backendName, "swift": "6"], 1)
    }

    // MARK: label mapping

    static func opIndex(_ op: String) -> Int {
        switch op {
        case "Status", "/v2.KeyManagementService/Status": 0
        case "Encrypt", "/v2.KeyManagementService/Encrypt": 1
        case "Decrypt", "/v2.KeyManagementService/Decrypt": 2
        default: 3
        }
    }

    static func codeIndex(_ code: String) -> Int {
        if let number = Int(code) {
            return codes.indices.contains(number) ? number : unknownCodeIndex
        }
        return codes.firstIndex(of: code) ?? unknownCodeIndex
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
