// What the run reports: one event per phase start/end, change, warning or progress step. kekctl prints them as text
// lines or as one JSON object a line (`--output json`). Events never carry object data, ciphertexts or tokens.
import JSON

public struct RotationEvent: Sendable {
    public enum Kind: String, Sendable {
        case start, end, info, change, warning, progress, error
    }
    public var phase: RotationPhase
    public var kind: Kind
    public var message: String
    public var fields: [String: JSONValue]

    public init(phase: RotationPhase, kind: Kind, message: String, fields: [String: JSONValue] = [:]) {
        self.phase = phase; self.kind = kind; self.message = message; self.fields = fields
    }

    /// One compact JSON object: `{"phase", "event", "message", ...fields}`.
    public func json() -> JSONValue {
        var o = fields
        o["phase"] = .string(phase.rawValue)
        o["event"] = .string(kind.rawValue)
        o["message"] = .string(message)
        return .object(o)
    }
}

public struct RotationOptions: Sendable {
    public var provider: String
    public var resources: [String] = ["secrets"]
    public var settleSeconds: Double = 300
    public var convergeTimeout: Double = 600
    /// Consecutive observations of the new key on every apiserver before converge passes.
    public var stableObservations = 3
    public var pollInterval: Double = 2
    public var qps: Double = 50
    public var concurrency = 4
    public var pageSize = 500
    public var retire = false
    public var dryRun = false
    /// `--skip-rotate --new-key-id ID`: the key was rotated elsewhere.
    public var skipRotateNewKeyID: String?
    /// Attempts for a 5xx or a conflict before the migrate phase gives up.
    public var maxAttempts = 6

    public init(provider: String) { self.provider = provider }
}

/// How a run ended; kekctl maps it to the exit code (0, 1, 3).
public enum RotationOutcome: Sendable, Equatable {
    case done
    case failed(RotationPhase, String)
    case refused(String)
    case interrupted(RotationPhase)
}
