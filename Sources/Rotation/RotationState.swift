// What a cluster rotation has done so far, persisted after every step so that a run killed at any point (Ctrl-C,
// a crash, a reboot) resumes where it stopped and the state file always describes the cluster's real situation.
import FoundationEssentials
import JSON
import KMS

/// The phases of `kekctl rotate-cluster`, in the order they run.
public enum RotationPhase: String, Sendable, CaseIterable {
    case preflight, rotate, converge, settle, migrate, verify, retire, done
}

/// How far the migrate phase got inside one resource: the list `continue` token after the last finished page.
public struct MigrationCursor: Sendable, Equatable {
    public var resource: String
    public var continueToken: String?
    public var done: Int
    public init(resource: String, continueToken: String?, done: Int) {
        self.resource = resource; self.continueToken = continueToken; self.done = done
    }
}

public struct RotationState: Sendable, Equatable {
    public static let formatVersion = 1

    public var provider: String
    public var backend: String
    /// The phase to run next; `.done` when the rotation is complete.
    public var phase: RotationPhase
    public var oldKeyID: String?
    public var newKeyID: String?
    /// rotate phase progress: "staged", "distributed", "promoted" (file backend), "rotated" (Vault or --skip-rotate).
    public var rotateStep: String?
    /// Unix time when the settle phase ends (set when settle starts, so a resumed run waits only the rest).
    public var settleUntil: Double?
    public var resources: [String]
    public var finishedResources: [String] = []
    public var cursor: MigrationCursor?
    /// Objects written back by the migrate phase (all resources).
    public var migrated = 0
    /// "census" or "metrics" once verify passed.
    public var verifiedBy: String?
    public var retired = false

    public init(provider: String, backend: String, resources: [String]) {
        self.provider = provider; self.backend = backend; self.resources = resources; self.phase = .preflight
    }

    public func json() -> JSONValue {
        var o: [String: JSONValue] = [
            "format": .number(Double(Self.formatVersion)),
            "provider": .string(provider), "backend": .string(backend), "phase": .string(phase.rawValue),
            "resources": .array(resources.map { .string($0) }),
            "finished_resources": .array(finishedResources.map { .string($0) }),
            "migrated": .number(Double(migrated)), "retired": .bool(retired),
        ]
        if let oldKeyID { o["old_key_id"] = .string(oldKeyID) }
        if let newKeyID { o["new_key_id"] = .string(newKeyID) }
        if let rotateStep { o["rotate_step"] = .string(rotateStep) }
        if let settleUntil { o["settle_until"] = .number(settleUntil.rounded(.up)) }
        if let verifiedBy { o["verified_by"] = .string(verifiedBy) }
        if let cursor {
            var c: [String: JSONValue] = ["resource": .string(cursor.resource), "done": .number(Double(cursor.done))]
            if let token = cursor.continueToken { c["continue"] = .string(token) }
            o["cursor"] = .object(c)
        }
        return .object(o)
    }

    /// Reads a state file's JSON; nil with a reason when it is not one this version wrote.
    public static func parse(_ bytes: [UInt8]) -> Result<RotationState, RotationError> {
        func bad(_ why: String) -> Result<RotationState, RotationError> { .failure(RotationError("state file: \(why)")) }
        guard let json = JSONValue.parse(bytes), json.object != nil else { return bad("not a JSON object") }
        guard json["format"]?.int == formatVersion else { return bad("unknown format (expected \(formatVersion))") }
        guard let provider = json["provider"]?.string, let backend = json["backend"]?.string,
              let phaseText = json["phase"]?.string, let phase = RotationPhase(rawValue: phaseText),
              let resources = json["resources"]?.array?.compactMap(\.string) else { return bad("missing provider, backend, phase or resources") }
        var state = RotationState(provider: provider, backend: backend, resources: resources)
        state.phase = phase
        state.finishedResources = json["finished_resources"]?.array?.compactMap(\.string) ?? []
        state.migrated = json["migrated"]?.int ?? 0
        state.retired = json["retired"]?.bool ?? false
        state.oldKeyID = json["old_key_id"]?.string
        state.newKeyID = json["new_key_id"]?.string
        state.rotateStep = json["rotate_step"]?.string
        if case .number(let until)? = json["settle_until"] { state.settleUntil = until }
        state.verifiedBy = json["verified_by"]?.string
        if let c = json["cursor"], let resource = c["resource"]?.string {
            state.cursor = MigrationCursor(resource: resource, continueToken: c["continue"]?.string, done: c["done"]?.int ?? 0)
        }
        return .success(state)
    }
}

/// A rotation step that failed, with the one-line reason shown to the operator.
public struct RotationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The state file: `--state-file`, default ./kekctl-rotation.json, written atomically with mode 0600.
public enum RotationStateFile {
    public static let defaultPath = "./kekctl-rotation.json"

    /// nil when there is no state file (a fresh start).
    public static func load(path: String) throws(RotationError) -> RotationState? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else { throw RotationError("cannot read state file \(path)") }
        switch RotationState.parse([UInt8](data)) {
        case .success(let state): return state
        case .failure(let error): throw RotationError("\(path): \(error.message)")
        }
    }

    public static func save(_ state: RotationState, path: String) throws(RotationError) {
        do {
            try KeyFileStore.writeAtomically(state.json().serialized() + [0x0a], to: path, replace: true)
        } catch {
            throw RotationError("cannot write state file \(path): \(error.message)")
        }
    }
}
