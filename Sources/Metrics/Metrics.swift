// kekd's metrics: recorded by the server on every call, rendered for Prometheus by the health endpoint.
import Glibc
import GRPC
import GRPCCodes
import Locking
import Synchronization

/// What the audit log reports at scrape time.
public struct AuditFigures: Sendable {
    public var written: Int, dropped: Int, failed: Int, queueDepth: Int, queueCapacity: Int
    public init(written: Int, dropped: Int, failed: Int, queueDepth: Int, queueCapacity: Int) {
        self.written = written; self.dropped = dropped; self.failed = failed
        self.queueDepth = queueDepth; self.queueCapacity = queueCapacity
    }
}

/// One configured key backend at scrape time: its kind, its role (`encrypt` or `decrypt-only`) and whether it can
/// serve that role.
public struct BackendFigures: Sendable {
    public var backend: String
    public var role: String
    public var healthy: Bool
    public init(backend: String, role: String, healthy: Bool) { self.backend = backend; self.role = role; self.healthy = healthy }
}

/// What the Vault backend reports at scrape time. Token figures are nil when the token does not expire.
public struct VaultFigures: Sendable {
    public var circuitOpen: Bool, tokenExpiry: Double?, tokenTTL: Double?
    public init(circuitOpen: Bool, tokenExpiry: Double?, tokenTTL: Double?) {
        self.circuitOpen = circuitOpen; self.tokenExpiry = tokenExpiry; self.tokenTTL = tokenTTL
    }
}

/// Every figure kekd exports, under the `kekd_` prefix. Thread-safe; each observation is a few relaxed atomic
/// adds (plus a short lock to find the slot of string-labelled backend and protocol-error series), with no
/// allocation.
public final class KekdMetrics: Sendable {
    /// The gRPC `op` label: the three KMS methods, and `other` for any other path (the raw path is unbounded
    /// cardinality). Its raw value is the series' slot.
    public enum Op: Int, CaseIterable, Sendable {
        case status, encrypt, decrypt, other

        public var label: String {
            switch self {
            case .status: "Status"
            case .encrypt: "Encrypt"
            case .decrypt: "Decrypt"
            case .other: "other"
            }
        }
    }
    /// The `code` label: every gRPC status code, in code order (a series' slot is op * codes.count + code).
    static let codes = GRPCStatusCode.allCases

    private let version: String
    private let backendName: String
    private let startTime: Double

    private let requests = CounterBlock()           // slot op * codes.count + code
    private let requestDurations = HistogramBlock() // series = op
    private let inFlight = Atomic<Int>(0)
    private let openConnections = Atomic<Int>(0)
    private let connectionsAccepted = Atomic<UInt64>(0)
    // The health endpoint's own figures (rendered in Metrics+Health.swift).
    let healthBindFailures = Atomic<UInt64>(0)
    let healthListening = Atomic<Int>(0)
    let healthConnectionsEvicted = Atomic<UInt64>(0)
    private let cacheHits = Atomic<UInt64>(0)
    private let cacheMisses = Atomic<UInt64>(0)
    private let protocolErrors = CounterBlock()     // slot = the kind's index in ProtocolErrorKind.allCases
    private let backendRequestLabels = LabelSlots(capacity: 32, overflow: LabelKey(first: "other", second: "other"))
    private let backendRequests = CounterBlock()
    private let backendDurationLabels = LabelSlots(capacity: 15, overflow: LabelKey(first: "other", second: ""))
    private let backendDurations = HistogramBlock()
    private let keyID = LockedValue<String>("")
    private let auditStats = LockedValue<(@Sendable () -> AuditFigures)?>(nil)
    private let vaultState = LockedValue<(@Sendable () -> VaultFigures)?>(nil)
    let pkcs11Problem = LockedValue<(@Sendable () -> String?)?>(nil)  // rendered in Metrics+PKCS11.swift
    private let auditChainHead = LockedValue<(@Sendable () -> (lastSeq: UInt64, headHex: String))?>(nil)
    private let keyFileHealth = LockedValue<(@Sendable () -> (valid: Bool, rejectedReloads: Int))?>(nil)
    private let backendStates = LockedValue<(@Sendable () -> [BackendFigures])?>(nil)

    public init(version: String, backend: String) {
        self.version = version
        self.backendName = backend
        startTime = ProcessStats.startTimeSeconds() ?? Self.now()
    }

    // MARK: recording

    public func callStarted(op: Op) {
        inFlight.wrappingAdd(1, ordering: .relaxed)
    }

    public func callFinished(op: Op, code: GRPCStatusCode, seconds: Double) {
        inFlight.wrappingSubtract(1, ordering: .relaxed)
        requests.add(op.rawValue * Self.codes.count + code.rawValue)
        requestDurations.observe(series: op.rawValue, seconds: seconds)
    }

    public func connectionOpened() {
        openConnections.wrappingAdd(1, ordering: .relaxed)
        connectionsAccepted.wrappingAdd(1, ordering: .relaxed)
    }

    public func connectionClosed() {
        openConnections.wrappingSubtract(1, ordering: .relaxed)
    }

    public func protocolError(_ kind: ProtocolErrorKind) {
        protocolErrors.add(Self.protocolErrorSlots[kind]!)
    }

    private static let protocolErrorSlots = Dictionary(uniqueKeysWithValues: ProtocolErrorKind.allCases.enumerated().map { ($1, $0) })

    /// One call to the key backend (`op` e.g. `encrypt`, `decrypt`, `read_key`; `result` e.g. `ok`, `error`).
    public func backendCall(op: String, result: String, seconds: Double) {
        backendRequests.add(backendRequestLabels.slot(op, result))
        backendDurations.observe(series: backendDurationLabels.slot(op), seconds: seconds)
    }

    public func cache(hit: Bool) {
        if hit {
            cacheHits.wrappingAdd(1, ordering: .relaxed)
        } else {
            cacheMisses.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// The current primary key_id; only this one is exported (`kekd_key_info{key_id} 1`).
    public func setKeyID(_ keyID: String) {
        self.keyID.withLock { $0 = keyID }
    }

    public func setAuditStatsProvider(_ f: @escaping @Sendable () -> AuditFigures) {
        auditStats.withLock { $0 = f }
    }

    /// Vault backend only: circuit breaker and token lifetime, read at scrape time.
    public func setVaultStateProvider(_ f: @escaping @Sendable () -> VaultFigures) {
        vaultState.withLock { $0 = f }
    }

    /// The audit chain's position (last seq written and a hex prefix of its chain value), so an off-node
    /// Prometheus witnesses it and `kekctl audit verify --expect-seq/--expect-head` can detect a cut tail.
    public func setAuditChainHeadProvider(_ f: @escaping @Sendable () -> (lastSeq: UInt64, headHex: String)) {
        auditChainHead.withLock { $0 = f }
    }

    /// The local key file's state (file backend only): loaded successfully, and reloads rejected since start.
    public func setKeyFileHealthProvider(_ f: @escaping @Sendable () -> (valid: Bool, rejectedReloads: Int)) {
        keyFileHealth.withLock { $0 = f }
    }

    /// Every configured key backend (the encrypting one and any decrypt-only ones), read at scrape time.
    public func setBackendsProvider(_ f: @escaping @Sendable () -> [BackendFigures]) {
        backendStates.withLock { $0 = f }
    }

    // MARK: rendering

    public func render() -> String {
        var w = PrometheusTextWriter()
        renderCalls(&w)
        renderConnections(&w)
        renderHealth(&w)
        renderPKCS11(&w)
        renderBackend(&w)
        renderAudit(&w)
        renderKeyFile(&w)
        renderProcess(&w)
        return w.output
    }

    private func renderCalls(_ w: inout PrometheusTextWriter) {
        w.family("kekd_grpc_requests_total", .counter, help: "gRPC calls finished, by method and status code.")
        for op in Op.allCases {
            for code in Self.codes {
                let value = requests.value(op.rawValue * Self.codes.count + code.rawValue)
                // The OK series of the three KMS methods always exist so rate() works from the first scrape.
                if value > 0 || (code == .ok && op != .other) {
                    w.sample("kekd_grpc_requests_total", ["op": op.label, "code": code.name], value)
                }
            }
        }
        w.family("kekd_grpc_request_duration_seconds", .histogram, help: "gRPC call latency, by method.")
        for op in Op.allCases {
            let snapshot = requestDurations.snapshot(series: op.rawValue)
            if snapshot.count > 0 || op != .other {
                w.histogram("kekd_grpc_request_duration_seconds", labelName: "op", labelValue: op.label, snapshot: snapshot)
            }
        }
        w.family("kekd_grpc_requests_in_flight", .gauge, help: "gRPC calls started and not yet finished.")
        w.sample("kekd_grpc_requests_in_flight", inFlight.load(ordering: .relaxed))
    }

    private func renderConnections(_ w: inout PrometheusTextWriter) {
        w.family("kekd_connections", .gauge, help: "Open client connections on the KMS socket.")
        w.sample("kekd_connections", openConnections.load(ordering: .relaxed))
        // Not `kekd_connections_total`: OpenMetrics parsers name a counter's family without `_total`, which would
        // collide with the `kekd_connections` gauge.
        w.family("kekd_connections_accepted_total", .counter, help: "Client connections accepted on the KMS socket.")
        w.sample("kekd_connections_accepted_total", connectionsAccepted.load(ordering: .relaxed))
        w.family("kekd_http2_protocol_errors_total", .counter, help: "HTTP/2 protocol violations by peers, by kind.")
        for (slot, kind) in ProtocolErrorKind.allCases.enumerated() {
            let value = protocolErrors.value(slot)
            if value > 0 { w.sample("kekd_http2_protocol_errors_total", ["kind": kind.rawValue], value) }
        }
    }

    private func renderBackend(_ w: inout PrometheusTextWriter) {
        w.family("kekd_backend_requests_total", .counter, help: "Calls to the key backend, by operation and result.")
        for (key, slot) in backendRequestLabels.all() {
            w.sample("kekd_backend_requests_total", ["op": key.first, "result": key.second], backendRequests.value(slot))
        }
        w.family("kekd_backend_request_duration_seconds", .histogram, help: "Key backend call latency, by operation.")
        for (key, slot) in backendDurationLabels.all() {
            w.histogram("kekd_backend_request_duration_seconds", labelName: "op", labelValue: key.first,
                        snapshot: backendDurations.snapshot(series: slot))
        }
        w.family("kekd_backend_cache_requests_total", .counter, help: "Lookups in the backend's key cache.")
        w.sample("kekd_backend_cache_requests_total", ["result": "hit"], cacheHits.load(ordering: .relaxed))
        w.sample("kekd_backend_cache_requests_total", ["result": "miss"], cacheMisses.load(ordering: .relaxed))
        if let provider = vaultState.withLock({ $0 }) {
            let vault = provider()
            w.family("kekd_vault_circuit_open", .gauge, help: "1 while the Vault circuit breaker fails calls fast.")
            w.sample("kekd_vault_circuit_open", vault.circuitOpen ? 1 : 0)
            if let expiry = vault.tokenExpiry, let ttl = vault.tokenTTL {
                w.family("kekd_vault_token_expiry_timestamp_seconds", .gauge, help: "When the Vault token expires unless renewed, Unix seconds.")
                w.sample("kekd_vault_token_expiry_timestamp_seconds", expiry)
                w.family("kekd_vault_token_ttl_seconds", .gauge, help: "Lease of the Vault token when last obtained or renewed.")
                w.sample("kekd_vault_token_ttl_seconds", ttl)
            }
        }
        if let provider = backendStates.withLock({ $0 }) {
            let backends = provider()
            w.family("kekd_backend_up", .gauge, help: "1 while a configured key backend can serve its role, by backend and role (encrypt, decrypt-only).")
            for b in backends { w.sample("kekd_backend_up", ["backend": b.backend, "role": b.role], b.healthy ? 1 : 0) }
        }
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
        w.sample("kekd_audit_records_total", ["result": "failed"], stats.failed)
        w.family("kekd_audit_queue_depth", .gauge, help: "Audit records waiting for the writer.")
        w.sample("kekd_audit_queue_depth", stats.queueDepth)
        w.family("kekd_audit_queue_capacity", .gauge, help: "Audit records the queue holds before best-effort drops them.")
        w.sample("kekd_audit_queue_capacity", stats.queueCapacity)

        guard let headProvider = auditChainHead.withLock({ $0 }) else { return }
        let head = headProvider()
        w.family("kekd_audit_last_seq", .gauge, help: "seq of the last audit record written (0: none yet).")
        w.sample("kekd_audit_last_seq", head.lastSeq)
        w.family("kekd_audit_chain_head_info", .gauge, help: "Hex prefix of the last audit record's chain value (value always 1).")
        w.sample("kekd_audit_chain_head_info", ["head": head.headHex], 1)
    }

    private func renderKeyFile(_ w: inout PrometheusTextWriter) {
        guard let provider = keyFileHealth.withLock({ $0 }) else { return }
        let health = provider()
        w.family("kekd_key_file_valid", .gauge, help: "1 when the key file was last loaded successfully, 0 after a rejected reload.")
        w.sample("kekd_key_file_valid", health.valid ? 1 : 0)
        w.family("kekd_key_file_reload_failures_total", .counter, help: "Key file reloads rejected (kekd kept its previous keys).")
        w.sample("kekd_key_file_reload_failures_total", health.rejectedReloads)
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
        if let maxFDs = ProcessStats.maxFileDescriptors() {
            w.family("kekd_process_max_fds", .gauge, help: "Soft limit on open file descriptors (RLIMIT_NOFILE).")
            w.sample("kekd_process_max_fds", maxFDs)
        }
        if let limit = ProcessStats.memoryLimitBytes() {
            w.family("kekd_process_memory_limit_bytes", .gauge, help: "Memory limit of kekd's cgroup (memory.max), when one is set.")
            w.sample("kekd_process_memory_limit_bytes", limit)
        }
        w.family("kekd_process_start_time_seconds", .gauge, help: "Start time of the process, Unix seconds.")
        w.sample("kekd_process_start_time_seconds", startTime)
        w.family("kekd_build_info", .gauge, help: "kekd build: version, key backend, Swift language mode.")
        w.sample("kekd_build_info", ["version": version, "backend": backendName, "swift": "6"], 1)
    }

    // MARK: label mapping

    /// The method name or the full gRPC path. Dispatches on length first: a String `switch` tries each pattern
    /// in turn, and every mismatch costs a byte comparison; an equal small string matches on its raw bits.
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
