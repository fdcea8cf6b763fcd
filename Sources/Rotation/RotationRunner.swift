// The rotation as a state machine over its phases. Each phase is idempotent and saves the state before and after
// every change it makes, so the state file always says what the cluster has been through and a resumed run
// (same command) continues at the first unfinished step.
import Crypto
import JSON
import Locking

/// The `key_id_hash` label kube-apiserver puts on its KMS metrics: "sha256:" + hex(sha256(key_id)).
public func kmsKeyIDHash(_ keyID: String) -> String { "sha256:" + hexString(SHA256.hash(Array(keyID.utf8))) }

public final class RotationRunner {
    public private(set) var state: RotationState
    let options: RotationOptions
    let fleet: APIServerFleet
    let store: ObjectStore
    let rotator: KeyRotator?
    let plugin: PluginProbe
    let verifier: MigrationVerifier
    let clock: RotationClock
    let save: (RotationState) throws(RotationError) -> Void
    let emit: (RotationEvent) -> Void

    private struct Interrupted: Error {}

    public init(options: RotationOptions, state: RotationState, fleet: APIServerFleet, store: ObjectStore,
                rotator: KeyRotator?, plugin: PluginProbe, verifier: MigrationVerifier, clock: RotationClock,
                save: @escaping (RotationState) throws(RotationError) -> Void, emit: @escaping (RotationEvent) -> Void) {
        self.options = options; self.state = state; self.fleet = fleet; self.store = store; self.rotator = rotator
        self.plugin = plugin; self.verifier = verifier; self.clock = clock; self.save = save; self.emit = emit
    }

    public func run() -> RotationOutcome {
        if state.phase == .done {
            emit(RotationEvent(phase: .done, kind: .info, message: "rotation to key_id \(state.newKeyID ?? "?") already complete; "
                               + "remove the state file to start another rotation"))
            return .done
        }
        while state.phase != .done {
            let phase = state.phase
            if clock.interrupted() { return interrupted(phase) }
            emit(RotationEvent(phase: phase, kind: .start, message: "\(phase.rawValue): started"))
            do {
                try runPhase(phase)
                if options.dryRun { return .done }
            } catch is Interrupted {
                return interrupted(phase)
            } catch {
                let message = (error as? RotationError)?.message ?? "\(error)"
                emit(RotationEvent(phase: phase, kind: .error, message: "\(phase.rawValue) failed: \(message)"))
                return phase == .preflight ? .refused(message) : .failed(phase, message)
            }
            emit(RotationEvent(phase: phase, kind: .end, message: "\(phase.rawValue): done"))
        }
        return .done
    }

    private func interrupted(_ phase: RotationPhase) -> RotationOutcome {
        try? save(state)
        emit(RotationEvent(phase: phase, kind: .warning, message: "interrupted during \(phase.rawValue); state saved, run the same command to resume"))
        return .interrupted(phase)
    }

    private func runPhase(_ phase: RotationPhase) throws {
        switch phase {
        case .preflight: try preflight()
        case .rotate: try rotate()
        case .converge: try converge()
        case .settle: try settle()
        case .migrate: try migrate()
        case .verify: try verify()
        case .retire: try retire()
        case .done: return
        }
        if options.dryRun { return }
        let all = RotationPhase.allCases
        state.phase = all[all.firstIndex(of: phase)! + 1]
        try save(state)
    }

    private func info(_ phase: RotationPhase, _ message: String, _ kind: RotationEvent.Kind = .info, _ fields: [String: JSONValue] = [:]) {
        emit(RotationEvent(phase: phase, kind: kind, message: message, fields: fields))
    }

    // MARK: preflight

    private func preflight() throws {
        let provider = options.provider
        let apiservers = try fleet.discover()
        guard !apiservers.isEmpty else { throw RotationError("no apiserver found (give --apiservers URL,...)") }
        info(.preflight, "apiservers: \(apiservers.joined(separator: ", "))", .info, ["apiservers": .array(apiservers.map { .string($0) })])
        var hashes: [(String, String)] = []
        for apiserver in apiservers {
            if let problem = try fleet.kmsReadiness(apiserver) {
                throw RotationError("apiserver \(apiserver): /readyz/kms-providers is not ok: \(problem)")
            }
            guard let hash = try fleet.currentKeyIDHash(apiserver, provider: provider) else {
                throw RotationError("apiserver \(apiserver) reports no KMS key for provider \(provider) in its metrics (is --provider right?)")
            }
            hashes.append((apiserver, hash))
        }
        let pluginKeyID = try plugin.keyID()
        let pluginHash = kmsKeyIDHash(pluginKeyID)
        var accepted = [pluginHash]
        if let newKeyID = options.skipRotateNewKeyID { accepted.append(kmsKeyIDHash(newKeyID)) }
        let mismatched = hashes.filter { !accepted.contains($0.1) }
        if !mismatched.isEmpty {
            throw RotationError("apiserver(s) \(mismatched.map(\.0).joined(separator: ", ")) report key_id_hash \(mismatched[0].1), not the key "
                                + "\(pluginKeyID) this node's kekd reports (\(pluginHash)); bring every node to the same key first")
        }
        if options.skipRotateNewKeyID == nil, Set(hashes.map(\.1)).count > 1 {
            throw RotationError("apiservers disagree on the current key: " + hashes.map { "\($0.0)=\($0.1)" }.joined(separator: ", "))
        }
        if let newKeyID = options.skipRotateNewKeyID {
            state.oldKeyID = pluginKeyID == newKeyID ? nil : pluginKeyID
        } else {
            state.oldKeyID = pluginKeyID
        }
        info(.preflight, "every apiserver is ready and on key_id \(pluginKeyID) (\(pluginHash))", .info, ["key_id": .string(pluginKeyID)])
        if options.dryRun { try describeDryRun(apiservers: apiservers, keyID: pluginKeyID) }
    }

    private func describeDryRun(apiservers: [String], keyID: String) throws {
        if let newKeyID = options.skipRotateNewKeyID {
            info(.rotate, "would not rotate (--skip-rotate); new key_id \(newKeyID)")
        } else if let rotator {
            info(.rotate, "would stage a new \(rotator.backend) key version after \(keyID), distribute it, then promote it")
        }
        info(.converge, "would wait until all \(apiservers.count) apiserver(s) report the new key \(options.stableObservations) times in a row "
             + "(timeout \(Int(options.convergeTimeout))s)")
        info(.settle, "would wait \(Int(options.settleSeconds))s for the apiservers' previous write seeds to expire")
        var total = 0
        for resource in options.resources {
            var count = 0, token: String? = nil
            repeat {
                let page = try listPage(resource: resource, continueToken: token)
                count += page.items.count
                token = page.continueToken
            } while token != nil
            total += count
            info(.migrate, "would rewrite \(count) \(resource) (no-op PUT; the apiservers re-encrypt only the stale ones)", .info,
                 ["resource": .string(resource), "total": .number(Double(count))])
        }
        info(.verify, "would check that all \(total) objects are stored under the new key")
        if options.retire, let rotator, let old = state.oldKeyID {
            info(.retire, "would retire key_id \(old) (\(rotator.backend))")
        } else {
            info(.retire, "would not retire (no --retire)")
        }
    }

    // MARK: rotate

    private func rotate() throws {
        if let newKeyID = options.skipRotateNewKeyID {
            state.newKeyID = newKeyID
            state.rotateStep = "rotated"
            info(.rotate, "--skip-rotate: using key_id \(newKeyID), rotated elsewhere")
            return
        }
        guard let rotator else { throw RotationError("no key backend given (--key-file or --backend vault), and no --skip-rotate") }
        guard let old = state.oldKeyID else { throw RotationError("state file has no old key_id; remove it and start again") }
        let log = { (message: String) in self.info(.rotate, message, .change) }
        if state.rotateStep == nil {
            let new = try rotator.stage(oldKeyID: old, log: log)
            state.newKeyID = new
            state.rotateStep = "staged"
            try save(state)
            info(.rotate, "staged key_id \(new)", .change, ["new_key_id": .string(new)])
        }
        guard let new = state.newKeyID else { throw RotationError("state file has no new key_id; remove it and start again") }
        if clock.interrupted() { throw Interrupted() }
        if state.rotateStep == "staged" {
            try rotator.distribute(log: log)
            state.rotateStep = "distributed"
            try save(state)
        }
        if clock.interrupted() { throw Interrupted() }
        if state.rotateStep == "distributed" {
            try rotator.promote(newKeyID: new, log: log)
            state.rotateStep = "promoted"
            try save(state)
            info(.rotate, "key_id \(new) is now the primary (was \(old))", .change, ["old_key_id": .string(old), "new_key_id": .string(new)])
        }
    }

    // MARK: converge

    private func converge() throws {
        guard let new = state.newKeyID else { throw RotationError("state file has no new key_id; remove it and start again") }
        let target = kmsKeyIDHash(new)
        let deadline = clock.now() + options.convergeTimeout
        var stable = 0
        var lastLagging: [String] = []
        while true {
            if clock.interrupted() { throw Interrupted() }
            var lagging: [String] = []
            let apiservers = try fleet.discover()
            for apiserver in apiservers {
                // /readyz/kms-providers makes the apiserver call Status now instead of at its next poll.
                _ = try? fleet.kmsReadiness(apiserver)
                switch Result(catching: { () throws(RotationError) in try fleet.currentKeyIDHash(apiserver, provider: options.provider) }) {
                case .success(let hash) where hash == target: break
                case .success(let hash): lagging.append("\(apiserver) (reports \(hash ?? "no key"))")
                case .failure(let error): lagging.append("\(apiserver) (\(error.message))")
                }
            }
            switch Result(catching: { () throws(RotationError) in try plugin.keyID() }) {
            case .success(let id) where id == new: break
            case .success(let id): lagging.append("this node's kekd (reports key_id \(id))")
            case .failure(let error): lagging.append("this node's kekd (\(error.message))")
            }
            if lagging.isEmpty {
                stable += 1
                if stable >= options.stableObservations {
                    info(.converge, "all \(apiservers.count) apiserver(s) report key_id \(new) (\(stable) observations in a row)")
                    return
                }
            } else {
                stable = 0
                if lagging != lastLagging {
                    info(.converge, "waiting for: " + lagging.joined(separator: ", "), .progress, ["lagging": .array(lagging.map { .string($0) })])
                }
            }
            lastLagging = lagging
            if clock.now() >= deadline {
                let names = lagging.isEmpty ? "apiservers flapping" : lagging.joined(separator: ", ")
                throw RotationError("not converged within \(Int(options.convergeTimeout))s: \(names) not on key_id \(new) (\(target)); "
                                    + "check that node's kekd (`kekctl status`), that its key file has the new version, and the apiserver's KMS "
                                    + "provider config; then run the same command to resume")
            }
            clock.sleep(options.pollInterval)
        }
    }

    // MARK: settle

    private func settle() throws {
        if state.settleUntil == nil {
            state.settleUntil = clock.now() + options.settleSeconds
            try save(state)
            info(.settle, "waiting \(Int(options.settleSeconds))s so every apiserver's previous write seed expires")
        }
        while let until = state.settleUntil, clock.now() < until {
            if clock.interrupted() { throw Interrupted() }
            clock.sleep(min(until - clock.now(), 1))
        }
    }

    // MARK: migrate

    private func listPage(resource: String, continueToken: String?) throws -> ObjectPage {
        var attempt = 0
        while true {
            do {
                return try store.list(resource: resource, limit: options.pageSize, continueToken: continueToken)
            } catch {
                attempt += 1
                switch error {
                case .tooManyRequests(let wait) where attempt < options.maxAttempts * 3: clock.sleep(max(wait, 0.1))
                case .server where attempt < options.maxAttempts: clock.sleep(backoff(attempt))
                case .expired: throw error
                default: throw RotationError("list \(resource): \(describe(error))")
                }
            }
        }
    }

    private func backoff(_ attempt: Int) -> Double { min(0.2 * Double(1 << min(attempt, 6)), 5) }

    private func migrate() throws {
        for resource in state.resources where !state.finishedResources.contains(resource) {
            var cursor = state.cursor?.resource == resource ? state.cursor! : MigrationCursor(resource: resource, continueToken: nil, done: 0)
            let started = clock.now()
            let doneAtStart = cursor.done
            var restarts = 0
            while true {
                if clock.interrupted() { throw Interrupted() }
                let page: ObjectPage
                do {
                    page = try listPage(resource: resource, continueToken: cursor.continueToken)
                } catch APIFailure.expired {
                    // The continue token expired: list again from the start. Objects already rewritten are fresh
                    // now, so their PUT is a no-op the apiserver does not write.
                    restarts += 1
                    guard restarts <= options.maxAttempts else { throw RotationError("list \(resource): continue token expired \(restarts) times") }
                    info(.migrate, "\(resource): list continue token expired (410 Gone); listing again from the start", .warning)
                    cursor.continueToken = nil
                    continue
                }
                let rewritten = try rewrite(resource: resource, items: page.items)
                cursor.done += page.items.count
                cursor.continueToken = page.continueToken
                state.migrated += rewritten
                state.cursor = cursor
                try save(state)
                let elapsed = max(clock.now() - started, 0.001)
                let rate = Double(cursor.done - doneAtStart) / elapsed
                var fields: [String: JSONValue] = ["resource": .string(resource), "done": .number(Double(cursor.done)),
                                                   "rate": .number((rate * 10).rounded() / 10)]
                var message = "\(resource): \(cursor.done)"
                if let remaining = page.remaining {
                    let total = cursor.done + remaining
                    fields["total"] = .number(Double(total))
                    message += "/\(total)"
                    if rate > 0 {
                        fields["eta_seconds"] = .number((Double(remaining) / rate).rounded())
                        message += ", ETA \(Int((Double(remaining) / rate).rounded()))s"
                    }
                }
                message += ", \(Int(rate.rounded()))/s"
                info(.migrate, message, .progress, fields)
                if page.continueToken == nil { break }
            }
            state.finishedResources.append(resource)
            state.cursor = nil
            try save(state)
            info(.migrate, "\(resource): all \(cursor.done) rewritten through the apiserver", .change,
                 ["resource": .string(resource), "done": .number(Double(cursor.done))])
        }
    }

    /// Writes back every object of one page with `concurrency` workers under the `qps` limit. Returns how many were
    /// written (objects deleted meanwhile are skipped).
    private func rewrite(resource: String, items: [JSONValue]) throws -> Int {
        guard !items.isEmpty else { return 0 }
        let job = RewriteJob(resource: resource, items: items, store: store, clock: clock, options: options)
        let workers = max(1, min(options.concurrency, items.count))
        let finished = Condition()
        let running = LockedValue(workers)
        for index in 0..<workers {
            let started = startThread(name: "kekctl-put-\(index)") {
                job.work()
                running.withLock { $0 -= 1 }
                finished.lock(); finished.broadcast(); finished.unlock()
            }
            if !started { running.withLock { $0 -= 1 }; job.fail(RotationError("cannot start a worker thread")) }
        }
        finished.lock()
        while running.withLock({ $0 }) > 0 { _ = finished.wait(seconds: 0.2) }
        finished.unlock()
        if let failure = job.failure.withLock({ $0 }) { throw failure }
        if clock.interrupted() { throw Interrupted() }
        return job.written.withLock { $0 }
    }
}

func describe(_ failure: APIFailure) -> String {
    switch failure {
    case .notFound: "not found (404)"
    case .conflict: "conflict (409)"
    case .expired: "continue token expired (410)"
    case .tooManyRequests(let wait): "too many requests (429, retry after \(wait)s)"
    case .server(let status, let message): "server error \(status): \(message)"
    case .fatal(let message): message
    }
}

/// One page's PUTs, shared by the worker threads: a next-item index, a rate limiter, the first failure.
private final class RewriteJob: Sendable {
    let resource: String
    let items: [JSONValue]
    let store: ObjectStore
    let clock: RotationClock
    let qps: Double
    let maxAttempts: Int
    let next = LockedValue(0)
    let written = LockedValue(0)
    let failure = LockedValue<RotationError?>(nil)
    let nextSlot = LockedValue(0.0)

    init(resource: String, items: [JSONValue], store: ObjectStore, clock: RotationClock, options: RotationOptions) {
        self.resource = resource; self.items = items; self.store = store; self.clock = clock
        self.qps = options.qps; self.maxAttempts = options.maxAttempts
    }

    func fail(_ error: RotationError) { failure.withLock { if $0 == nil { $0 = error } } }

    func work() {
        while true {
            let index = next.withLock { i in defer { i += 1 }; return i }
            guard index < items.count, failure.withLock({ $0 == nil }), !clock.interrupted() else { return }
            do {
                if try rewriteOne(items[index]) { written.withLock { $0 += 1 } }
            } catch {
                fail(error)
                return
            }
        }
    }

    /// Token-bucket pacing: each call takes the next 1/qps slot.
    private func pace() {
        guard qps > 0 else { return }
        let now = clock.now()
        let slot = nextSlot.withLock { next in
            let slot = max(next, now)
            next = slot + 1 / qps
            return slot
        }
        if slot > now { clock.sleep(slot - now) }
    }

    private func name(of object: JSONValue) -> String {
        let metadata = object["metadata"]
        let name = metadata?["name"]?.string ?? "?"
        if let namespace = metadata?["namespace"]?.string { return "\(resource) \(namespace)/\(name)" }
        return "\(resource) \(name)"
    }

    /// True when written, false when the object is gone.
    private func rewriteOne(_ listed: JSONValue) throws(RotationError) -> Bool {
        var object = listed
        var attempts = 0, throttled = 0
        while true {
            pace()
            do {
                try store.replace(resource: resource, object: object)
                return true
            } catch {
                switch error {
                case .notFound:
                    return false
                case .conflict:
                    // Modified since the list: write back what is there now (it was written with the current key
                    // anyway, but a PUT of the fresh version is cheap and makes sure).
                    attempts += 1
                    guard attempts < maxAttempts else { throw RotationError("PUT \(name(of: object)): still conflicting after \(attempts) attempts") }
                    do { object = try store.get(resource: resource, like: object) } catch {
                        if error == .notFound { return false }
                        if case .fatal(let m) = error { throw RotationError("GET \(name(of: object)): \(m)") }
                    }
                case .tooManyRequests(let wait):
                    throttled += 1
                    guard throttled < maxAttempts * 10 else { throw RotationError("PUT \(name(of: object)): still throttled (429) after \(throttled) attempts") }
                    clock.sleep(max(wait, 0.05))
                case .server(let status, let message):
                    attempts += 1
                    guard attempts < maxAttempts else { throw RotationError("PUT \(name(of: object)): \(status) \(message) after \(attempts) attempts") }
                    clock.sleep(min(0.2 * Double(1 << min(attempts, 5)), 5))
                case .expired, .fatal:
                    throw RotationError("PUT \(name(of: object)): \(describe(error))")
                }
            }
        }
    }
}

extension RotationRunner {
    // MARK: verify and retire

    private func verify() throws {
        guard let new = state.newKeyID else { throw RotationError("state file has no new key_id; remove it and start again") }
        let result = try verifier.verify(newKeyID: new, resources: state.resources) { self.info(.verify, $0) }
        state.verifiedBy = result.method
        info(.verify, result.summary, .info, ["method": .string(result.method)])
    }

    private func retire() throws {
        guard let new = state.newKeyID else { throw RotationError("state file has no new key_id; remove it and start again") }
        guard let old = state.oldKeyID else {
            info(.retire, "the old key_id is not known (--skip-rotate with kekd already on the new key): retire it by hand", .warning)
            return
        }
        guard state.verifiedBy != nil else { throw RotationError("verify has not passed; not retiring") }
        guard let rotator else {
            info(.retire, "no key backend given: retire key_id \(old) in your key backend once you are sure", .warning)
            return
        }
        guard options.retire else {
            info(.retire, "not retiring key_id \(old) (no --retire); to retire it later run: \(rotator.retireCommand(oldKeyID: old, newKeyID: new))")
            return
        }
        try rotator.retire(oldKeyID: old, newKeyID: new) { self.info(.retire, $0, .change) }
        state.retired = true
        info(.retire, "retired key_id \(old)", .change, ["old_key_id": .string(old)])
    }
}
