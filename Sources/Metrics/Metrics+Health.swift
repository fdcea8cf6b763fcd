// Figures of the health endpoint itself: whether it listens, failed binds, connections evicted at its cap.
import Synchronization

extension KekdMetrics {
    /// A bind of `--health-addr` failed (the port taken, say); the endpoint retries in the background.
    public func healthBindFailed() {
        healthBindFailures.wrappingAdd(1, ordering: .relaxed)
    }

    public func setHealthListening(_ listening: Bool) {
        healthListening.store(listening ? 1 : 0, ordering: .relaxed)
    }

    /// A held connection was closed to make room for a new one at the cap.
    public func healthConnectionEvicted() {
        healthConnectionsEvicted.wrappingAdd(1, ordering: .relaxed)
    }

    func renderHealth(_ w: inout PrometheusTextWriter) {
        w.family("kekd_health_listening", .gauge, help: "1 when the health endpoint is bound to --health-addr.")
        w.sample("kekd_health_listening", healthListening.load(ordering: .relaxed))
        w.family("kekd_health_bind_failures_total", .counter, help: "Failed binds of --health-addr (retried in the background).")
        w.sample("kekd_health_bind_failures_total", healthBindFailures.load(ordering: .relaxed))
        w.family("kekd_health_connections_evicted_total", .counter,
                 help: "Health connections closed at the connection cap to make room for a new one.")
        w.sample("kekd_health_connections_evicted_total", healthConnectionsEvicted.load(ordering: .relaxed))
    }
}
