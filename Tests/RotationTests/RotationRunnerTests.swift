// The rotation state machine against an in-memory cluster: apiservers that follow their node's key with a lag,
// objects that the no-op PUT re-encrypts only when stale, and injected faults (409, 404, 410, 429, 5xx, Ctrl-C).
import JSON
import Locking
import Rotation
import Testing

/// A whole control plane in memory. Each apiserver reports the key its node's key file has as primary, unless held
/// back (a lagging node).
final class FakeCluster: Sendable {
    struct Object { var resourceVersion: Int; var keyID: String; var writes: Int }
    struct World {
        var versions: [String] = ["key-1"]
        var primary = "key-1"
        var retired: Set<String> = []
        var apiservers = ["https://a:6443", "https://b:6443"]
        var lagging: Set<String> = []
        var objects: [String: Object] = [:]
        var distributions = 0
        /// Faults to return from the next PUTs, in order.
        var putFaults: [APIFailure] = []
        /// Expire the next list that passes a continue token.
        var expireNextContinue = false
        var deleteOnFirstPut: Set<String> = []
        var modifyOnFirstPut: Set<String> = []
        var puts = 0
    }
    let world = LockedValue(World())

    init(objects: Int) {
        world.withLock { w in
            for i in 0..<objects { w.objects[String(format4(i))] = Object(resourceVersion: 1, keyID: "key-1", writes: 0) }
        }
    }

    func read<T>(_ body: (World) -> T) -> T { world.withLock { w in body(w) } }
    func change(_ body: (inout World) -> Void) { world.withLock { w in body(&w) } }
}

func format4(_ i: Int) -> String { let s = String(i); return String(repeating: "0", count: max(0, 4 - s.count)) + s }

struct FakeFleet: APIServerFleet {
    let cluster: FakeCluster
    func discover() throws(RotationError) -> [String] { cluster.read { $0.apiservers } }
    func kmsReadiness(_ apiserver: String) throws(RotationError) -> String? { nil }
    func currentKeyIDHash(_ apiserver: String, provider: String) throws(RotationError) -> String? {
        guard provider == "kekd" else { return nil }
        return cluster.read { w in kmsKeyIDHash(w.lagging.contains(apiserver) ? "key-1" : w.primary) }
    }
}

struct FakeStore: ObjectStore {
    let cluster: FakeCluster
    func object(_ name: String, _ o: FakeCluster.Object) -> JSONValue {
        .object(["metadata": .object(["name": .string(name), "namespace": "default", "resourceVersion": .string(String(o.resourceVersion))])])
    }
    func list(resource: String, limit: Int, continueToken: String?) throws(APIFailure) -> ObjectPage {
        try cluster.world.withLock { w throws(APIFailure) in
            if continueToken != nil, w.expireNextContinue { w.expireNextContinue = false; throw .expired }
            let names = w.objects.keys.sorted().filter { continueToken == nil || $0 > continueToken! }
            let page = Array(names.prefix(limit))
            let more = names.count > limit
            return ObjectPage(items: page.map { object($0, w.objects[$0]!) }, continueToken: more ? page.last : nil,
                              remaining: more ? names.count - limit : 0)
        }
    }
    func get(resource: String, like object: JSONValue) throws(APIFailure) -> JSONValue {
        let name = object["metadata"]!["name"]!.string!
        return try cluster.world.withLock { w throws(APIFailure) in
            guard let o = w.objects[name] else { throw .notFound }
            return self.object(name, o)
        }
    }
    func replace(resource: String, object: JSONValue) throws(APIFailure) {
        let name = object["metadata"]!["name"]!.string!
        let rv = Int(object["metadata"]!["resourceVersion"]!.string!)!
        try cluster.world.withLock { w throws(APIFailure) in
            w.puts += 1
            if !w.putFaults.isEmpty { throw w.putFaults.removeFirst() }
            if w.deleteOnFirstPut.remove(name) != nil { w.objects[name] = nil }
            if w.modifyOnFirstPut.remove(name) != nil { w.objects[name]!.resourceVersion += 1 }
            guard var o = w.objects[name] else { throw .notFound }
            guard o.resourceVersion == rv else { throw .conflict }
            if o.keyID != w.primary {   // the apiserver rewrites only stale objects
                o.keyID = w.primary
                o.resourceVersion += 1
                o.writes += 1
            }
            w.objects[name] = o
        }
    }
}

struct FakeRotator: KeyRotator {
    let cluster: FakeCluster
    var backend: String { "file" }
    func stage(oldKeyID: String, log: (String) -> Void) throws(RotationError) -> String {
        cluster.world.withLock { w in
            if let last = w.versions.last, last != oldKeyID { return last }
            let new = "key-\(w.versions.count + 1)"
            w.versions.append(new)
            return new
        }
    }
    func distribute(log: (String) -> Void) throws(RotationError) { cluster.change { $0.distributions += 1 } }
    func promote(newKeyID: String, log: (String) -> Void) throws(RotationError) { cluster.change { $0.primary = newKeyID } }
    func retire(oldKeyID: String, newKeyID: String, log: (String) -> Void) throws(RotationError) {
        cluster.change { _ = $0.retired.insert(oldKeyID) }
    }
    func retireCommand(oldKeyID: String, newKeyID: String) -> String { "kekctl retire --key-id \(oldKeyID)" }
}

struct FakePlugin: PluginProbe {
    let cluster: FakeCluster
    func keyID() throws(RotationError) -> String { cluster.read { $0.primary } }
}

struct FakeVerifier: MigrationVerifier {
    let cluster: FakeCluster
    func verify(newKeyID: String, resources: [String], log: (String) -> Void) throws(RotationError) -> (method: String, summary: String) {
        let stale = cluster.read { w in w.objects.values.filter { $0.keyID != newKeyID }.count }
        guard stale == 0 else { throw RotationError("\(stale) objects not under \(newKeyID)") }
        return ("census", "all under \(newKeyID)")
    }
}

/// Virtual time; `interruptAfter` makes `interrupted()` turn true after that many checks (a Ctrl-C mid-run).
final class FakeClock: RotationClock {
    let time = LockedValue(1_000_000.0)
    let checks = LockedValue(0)
    let interruptAfter: Int?
    /// Called on every sleep with the virtual time: lets a test change the world while the run waits.
    let onSleep: (@Sendable (Double) -> Void)?
    init(interruptAfter: Int? = nil, onSleep: (@Sendable (Double) -> Void)? = nil) { self.interruptAfter = interruptAfter; self.onSleep = onSleep }
    func now() -> Double { time.withLock { $0 } }
    func sleep(_ seconds: Double) {
        let t = time.withLock { t in t += max(seconds, 0); return t }
        onSleep?(t)
    }
    func interrupted() -> Bool {
        guard let interruptAfter else { return false }
        return checks.withLock { c in c += 1; return c > interruptAfter }
    }
}

final class Recorder: Sendable {
    let events = LockedValue<[RotationEvent]>([])
    let saved = LockedValue<RotationState?>(nil)
    let saves = LockedValue(0)
    func messages() -> [String] { events.withLock { $0.map(\.message) } }
}

func makeRunner(_ cluster: FakeCluster, state: RotationState? = nil, clock: FakeClock = FakeClock(), recorder: Recorder,
                configure: (inout RotationOptions) -> Void = { _ in }) -> RotationRunner {
    var options = RotationOptions(provider: "kekd")
    options.settleSeconds = 30
    options.convergeTimeout = 60
    options.qps = 0
    options.pageSize = 100
    options.retire = true
    configure(&options)
    return RotationRunner(options: options, state: state ?? RotationState(provider: "kekd", backend: "file", resources: ["secrets"]),
                          fleet: FakeFleet(cluster: cluster), store: FakeStore(cluster: cluster), rotator: FakeRotator(cluster: cluster),
                          plugin: FakePlugin(cluster: cluster), verifier: FakeVerifier(cluster: cluster), clock: clock,
                          save: { state in recorder.saved.withLock { $0 = state }; recorder.saves.withLock { $0 += 1 } },
                          emit: { event in recorder.events.withLock { $0.append(event) } })
}

func expectRotatedCleanly(_ cluster: FakeCluster, objects: Int) {
    cluster.read { w in
        #expect(w.versions == ["key-1", "key-2"])
        #expect(w.primary == "key-2")
        #expect(w.retired == ["key-1"])
        #expect(w.objects.count == objects)
        #expect(w.objects.values.allSatisfy { $0.keyID == "key-2" })
        #expect(w.objects.values.allSatisfy { $0.writes == 1 })   // each stale object rewritten exactly once
    }
}

@Suite struct RotationRunnerTests {
    @Test func rotatesMigratesVerifiesAndRetires() {
        let cluster = FakeCluster(objects: 250)
        let recorder = Recorder()
        let runner = makeRunner(cluster, recorder: recorder) { $0.concurrency = 4 }
        #expect(runner.run() == .done)
        expectRotatedCleanly(cluster, objects: 250)
        let state = recorder.saved.withLock { $0 }!
        #expect(state.phase == .done && state.retired && state.verifiedBy == "census")
        #expect(state.oldKeyID == "key-1" && state.newKeyID == "key-2" && state.migrated == 250)
        #expect(cluster.read { $0.distributions } == 1)
        let starts = recorder.events.withLock { $0.filter { $0.kind == .start }.map(\.phase) }
        #expect(starts == [.preflight, .rotate, .converge, .settle, .migrate, .verify, .retire])
        // A finished rotation is not started again by re-running the command.
        let again = makeRunner(cluster, state: state, recorder: recorder)
        #expect(again.run() == .done)
        #expect(cluster.read { $0.versions.count } == 2)
    }

    @Test func stateRoundTripsThroughJSON() throws {
        var state = RotationState(provider: "kekd", backend: "vault", resources: ["secrets", "configmaps"])
        state.phase = .migrate
        state.oldKeyID = "a"; state.newKeyID = "b"; state.rotateStep = "promoted"; state.settleUntil = 1234
        state.finishedResources = ["secrets"]; state.migrated = 7
        state.cursor = MigrationCursor(resource: "configmaps", continueToken: "tok", done: 500)
        let parsed = try RotationState.parse(state.json().serialized()).get()
        #expect(parsed == state)
        #expect(throws: RotationError.self) { try RotationState.parse(Array("{\"format\":9}".utf8)).get() }
    }

    @Test func preflightRefusesAnApiserverOnAnotherKeyAndNamesIt() {
        let cluster = FakeCluster(objects: 1)
        cluster.change { $0.primary = "key-9"; $0.lagging = ["https://b:6443"] }
        let recorder = Recorder()
        guard case .refused(let message) = makeRunner(cluster, recorder: recorder).run() else { Issue.record("not refused"); return }
        #expect(message.contains("https://b:6443"))
        #expect(recorder.saves.withLock { $0 } == 0)
        #expect(cluster.read { $0.versions } == ["key-1"])
    }

    @Test func laggingNodeBlocksConvergeIsNamedAndTheRunResumes() {
        let cluster = FakeCluster(objects: 10)
        let recorder = Recorder()
        // The first sleep is converge's first poll interval, after the promote: from then on node b lags.
        let clock = FakeClock(onSleep: { _ in cluster.change { $0.lagging = ["https://b:6443"] } })
        guard case .failed(.converge, let message) = makeRunner(cluster, clock: clock, recorder: recorder).run() else {
            Issue.record("converge did not fail"); return
        }
        #expect(message.contains("https://b:6443"))
        #expect(!message.contains("https://a:6443"))
        #expect(recorder.messages().contains { $0.contains("waiting for: https://b:6443") })
        #expect(cluster.read { $0.puts } == 0)   // never moved on to migrate
        let saved = recorder.saved.withLock { $0 }!
        #expect(saved.phase == .converge)
        // Node fixed: the same command resumes and finishes without rotating again.
        cluster.change { $0.lagging = [] }
        #expect(makeRunner(cluster, state: saved, recorder: recorder).run() == .done)
        expectRotatedCleanly(cluster, objects: 10)
    }

    @Test func interruptedAtEveryStepResumesToTheSameResult() {
        let small = { (o: inout RotationOptions) in o.concurrency = 3; o.pageSize = 25; o.settleSeconds = 4 }
        var interruptAt = 0
        var runs = 0
        while true {
            let cluster = FakeCluster(objects: 60)
            let recorder = Recorder()
            var state: RotationState? = nil
            var outcome = makeRunner(cluster, clock: FakeClock(interruptAfter: interruptAt), recorder: recorder, configure: small).run()
            runs += 1
            if outcome == .done { break }
            guard case .interrupted = outcome else { Issue.record("outcome \(outcome) at \(interruptAt)"); return }
            state = recorder.saved.withLock { $0 }
            // The killed run may have been stopped before preflight saved anything: start afresh then.
            outcome = makeRunner(cluster, state: state, recorder: recorder, configure: small).run()
            #expect(outcome == .done, "interrupted after \(interruptAt) checks")
            expectRotatedCleanly(cluster, objects: 60)
            interruptAt += 1
            guard interruptAt < 1000 else { Issue.record("never finished"); return }
        }
        #expect(runs > 8)
    }

    @Test func migrateSurvivesConflictsDeletionsThrottlingServerErrorsAndExpiredLists() {
        let cluster = FakeCluster(objects: 320)
        cluster.change { w in
            w.putFaults = [.tooManyRequests(retryAfter: 2), .server(status: 503, message: "busy"), .server(status: 500, message: "x")]
            w.deleteOnFirstPut = ["0005", "0150"]
            w.modifyOnFirstPut = ["0007", "0299"]
            w.expireNextContinue = true
        }
        let recorder = Recorder()
        #expect(makeRunner(cluster, recorder: recorder) { $0.concurrency = 2 }.run() == .done)
        cluster.read { w in
            #expect(w.objects.count == 318)
            #expect(w.objects.values.allSatisfy { $0.keyID == "key-2" })
        }
        #expect(recorder.messages().contains { $0.contains("410 Gone") })
    }

    @Test func persistentServerErrorsFailTheMigratePhaseResumably() {
        let cluster = FakeCluster(objects: 5)
        cluster.change { $0.putFaults = Array(repeating: .server(status: 500, message: "etcd down"), count: 50) }
        let recorder = Recorder()
        guard case .failed(.migrate, let message) = makeRunner(cluster, recorder: recorder, configure: { $0.concurrency = 1 }).run() else {
            Issue.record("migrate did not fail"); return
        }
        #expect(message.contains("500"))
        let saved = recorder.saved.withLock { $0 }!
        #expect(saved.phase == .migrate)
        cluster.change { $0.putFaults = [] }
        #expect(makeRunner(cluster, state: saved, recorder: recorder).run() == .done)
        expectRotatedCleanly(cluster, objects: 5)
    }

    @Test func dryRunChangesNothingAndCounts() {
        let cluster = FakeCluster(objects: 42)
        let recorder = Recorder()
        #expect(makeRunner(cluster, recorder: recorder) { $0.dryRun = true }.run() == .done)
        #expect(cluster.read { $0.versions } == ["key-1"])
        #expect(cluster.read { $0.puts } == 0)
        #expect(recorder.saves.withLock { $0 } == 0)
        #expect(recorder.messages().contains { $0.contains("would rewrite 42 secrets") })
    }

    @Test func withoutRetireItPrintsTheCommand() {
        let cluster = FakeCluster(objects: 3)
        let recorder = Recorder()
        #expect(makeRunner(cluster, recorder: recorder) { $0.retire = false }.run() == .done)
        #expect(cluster.read { $0.retired.isEmpty })
        #expect(recorder.messages().contains { $0.contains("kekctl retire --key-id key-1") })
    }

    @Test func keyIDHashIsTheApiserverLabel() {
        // echo -n key-1 | sha256sum
        #expect(kmsKeyIDHash("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
