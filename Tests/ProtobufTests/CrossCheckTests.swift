import Foundation
import Testing
import Protobuf
import KMSProto

/// Differential tests against Google's `protobuf` Python package (Tests/Interop/protobuf_crosscheck.py), which
/// generates its classes from Proto/kms/v2/api.proto with grpc_tools.protoc at test time.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["KEKD_PYTHON"] != nil, "needs KEKD_PYTHON"))
struct CrossCheckTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let seed = ProcessInfo.processInfo.environment["KEKD_CROSSCHECK_SEED"].flatMap { UInt64($0) }
        ?? UInt64.random(in: 1...1_000_000)

    @Test func swiftDecodesWhatGoogleEncodes() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let casesFile = directory.appendingPathComponent("google-encoded.json")
        let output = try runCrossCheck(["generate", Self.proto, casesFile.path, "150", String(Self.seed)])
        #expect(output.status == 0, "generator failed (seed \(Self.seed)): \(output.text)")

        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: casesFile)) as? [String: Any]
        let cases = try #require(json?["cases"] as? [[String: Any]])
        var accepted = 0, rejected = 0, lenient = 0
        for (index, testCase) in cases.enumerated() {
            let type = testCase["type"] as? String ?? ""
            let wire = hexBytes(testCase["wire"] as? String ?? "")
            let context = Comment(rawValue: "seed \(Self.seed) case \(index) \(type) wire \(hexString(wire))")
            let decoded: Result<[String: FieldValue], ProtobufError> = decode(type: type, wire: wire)
            guard testCase["ok"] as? Bool == true else {
                rejected += 1
                #expect(throws: ProtobufError.self, context) { try decoded.get() }
                continue
            }
            if let divergence = testCase["error"] as? String {
                // Google's Python parser (upb) is laxer than protobuf-go here; kekd follows protobuf-go.
                lenient += 1
                let expected: ProtobufError? = switch divergence {
                case "wire type 3": .invalidWireType(3)
                case "wire type 4": .invalidWireType(4)
                case "field 0": .invalidFieldNumber(0)
                case "varint overflow": .malformedVarint
                default: nil
                }
                #expect(expected != nil && decoded == .failure(expected ?? .truncated), context)
                continue
            }
            accepted += 1
            var expected = fieldValues(fromJSON: try #require(testCase["fields"] as? [String: Any]))
            if testCase["map_entry_dropped"] as? Bool == true, case .success(let fields) = decoded {
                // upb set aside a map entry holding an unknown field; protobuf-go and kekd keep it.
                expected["annotations"] = fields["annotations"]
            }
            #expect(decoded == .success(expected), context)
        }
        #expect(cases.count == 900)
        #expect(accepted >= 500, "too few valid inputs to be a meaningful check")
        #expect(rejected >= 50, "too few malformed inputs to be a meaningful check")
        _ = lenient
    }

    @Test func googleDecodesWhatSwiftEncodes() throws {
        var rng = SeededGenerator(seed: Self.seed)
        var cases: [[String: Any]] = []
        for _ in 0..<60 {
            let messages: [(String, [UInt8], [String: FieldValue])] = [
                encoded(StatusRequest(), [:]),
                encoded(StatusResponse(version: rng.string(), healthz: rng.string(), keyID: rng.string())) {
                    ["version": .text($0.version), "healthz": .text($0.healthz), "key_id": .text($0.keyID)]
                },
                encoded(EncryptRequest(plaintext: rng.bytes(), uid: rng.string())) {
                    ["plaintext": .bytes($0.plaintext), "uid": .text($0.uid)]
                },
                encoded(EncryptResponse(ciphertext: rng.bytes(), keyID: rng.string(), annotations: rng.annotations())) {
                    ["ciphertext": .bytes($0.ciphertext), "key_id": .text($0.keyID), "annotations": .map($0.annotations)]
                },
                encoded(DecryptRequest(ciphertext: rng.bytes(), uid: rng.string(), keyID: rng.string(),
                                       annotations: rng.annotations())) {
                    ["ciphertext": .bytes($0.ciphertext), "uid": .text($0.uid), "key_id": .text($0.keyID),
                     "annotations": .map($0.annotations)]
                },
                encoded(DecryptResponse(plaintext: rng.bytes())) { ["plaintext": .bytes($0.plaintext)] },
            ]
            for (type, wire, fields) in messages {
                cases.append(["type": type, "wire": hexString(wire), "fields": fields.mapValues { $0.json }])
            }
        }
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let casesFile = directory.appendingPathComponent("swift-encoded.json")
        try JSONSerialization.data(withJSONObject: ["cases": cases]).write(to: casesFile)
        let output = try runCrossCheck(["verify", Self.proto, casesFile.path])
        #expect(output.status == 0, "seed \(Self.seed): \(output.text)")
        #expect(output.text.contains("verified 360 Swift-encoded messages, 0 mismatches"), "\(output.text)")
    }

    // MARK: - helpers

    static let proto = repositoryRoot.appendingPathComponent("Proto").path

    /// A decoded field in a form both sides can state: strings as UTF-8 bytes so JSON escaping cannot blur them.
    enum FieldValue: Equatable {
        case bytes([UInt8])
        case text(String)
        case map([String: [UInt8]])

        var json: Any {
            switch self {
            case .bytes(let bytes): return hexString(bytes)
            case .text(let text): return hexString(text.utf8)
            case .map(let map): return map.map { [hexString($0.key.utf8), hexString($0.value)] }
            }
        }

        static func == (lhs: FieldValue, rhs: FieldValue) -> Bool {
            // Compare strings by their bytes: String equality is by canonical equivalence, looser than protobuf's.
            switch (lhs, rhs) {
            case (.bytes(let a), .bytes(let b)): return a == b
            case (.text(let a), .text(let b)): return Array(a.utf8) == Array(b.utf8)
            case (.map(let a), .map(let b)):
                return a.count == b.count && a.allSatisfy { key, value in
                    b.contains { Array($0.key.utf8) == Array(key.utf8) && $0.value == value }
                }
            default: return false
            }
        }
    }

    func fieldValues(fromJSON json: [String: Any]) -> [String: FieldValue] {
        var out: [String: FieldValue] = [:]
        for (name, value) in json {
            if let pairs = value as? [[String]] {
                var map: [String: [UInt8]] = [:]
                for pair in pairs where pair.count == 2 { map[String(decoding: hexBytes(pair[0]), as: UTF8.self)] = hexBytes(pair[1]) }
                out[name] = .map(map)
            } else if let hex = value as? String {
                let isText = ["uid", "key_id", "version", "healthz"].contains(name)
                out[name] = isText ? .text(String(decoding: hexBytes(hex), as: UTF8.self)) : .bytes(hexBytes(hex))
            }
        }
        return out
    }

    func decode(type: String, wire: [UInt8]) -> Result<[String: FieldValue], ProtobufError> {
        Result { () throws(ProtobufError) -> [String: FieldValue] in
            switch type {
            case "StatusRequest":
                _ = try StatusRequest(serializedBytes: wire)
                return [:]
            case "StatusResponse":
                let m = try StatusResponse(serializedBytes: wire)
                return ["version": .text(m.version), "healthz": .text(m.healthz), "key_id": .text(m.keyID)]
            case "EncryptRequest":
                let m = try EncryptRequest(serializedBytes: wire)
                return ["plaintext": .bytes(m.plaintext), "uid": .text(m.uid)]
            case "EncryptResponse":
                let m = try EncryptResponse(serializedBytes: wire)
                return ["ciphertext": .bytes(m.ciphertext), "key_id": .text(m.keyID), "annotations": .map(m.annotations)]
            case "DecryptRequest":
                let m = try DecryptRequest(serializedBytes: wire)
                return ["ciphertext": .bytes(m.ciphertext), "uid": .text(m.uid), "key_id": .text(m.keyID),
                        "annotations": .map(m.annotations)]
            case "DecryptResponse":
                let m = try DecryptResponse(serializedBytes: wire)
                return ["plaintext": .bytes(m.plaintext)]
            default:
                return ["unknown type": .text(type)]
            }
        }
    }

    func encoded<M: ProtoMessage>(_ message: M, _ fields: (M) -> [String: FieldValue]) -> (String, [UInt8], [String: FieldValue]) {
        (String(describing: M.self), message.serializedBytes(), fields(message))
    }

    func encoded<M: ProtoMessage>(_ message: M, _ fields: [String: FieldValue]) -> (String, [UInt8], [String: FieldValue]) {
        (String(describing: M.self), message.serializedBytes(), fields)
    }

    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kekd-protobuf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    func runCrossCheck(_ arguments: [String]) throws -> (status: Int32, text: String) {
        let python = ProcessInfo.processInfo.environment["KEKD_PYTHON"] ?? "python3"
        let script = Self.repositoryRoot.appendingPathComponent("Tests/Interop/protobuf_crosscheck.py").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}
