// Differential test against PyYAML (Tests/Interop/yaml_differential.py): kubeadm-shaped documents, hand-picked
// corner cases and generated documents must read the same in both; documents outside YAML must be refused by both.
import Foundation
import Testing
import YAML

private let python = ProcessInfo.processInfo.environment["KEKD_PYTHON"]

/// A document value as plain JSON, the form the Python side builds from PyYAML's node graph.
private func plainJSON(_ value: YAMLValue) -> Any {
    switch value {
    case .mapping(let entries): return ["map", entries.map { [$0.key, plainJSON($0.value)] }] as [Any]
    case .sequence(let items): return ["seq", items.map(plainJSON)] as [Any]
    case .scalar(let s): return s
    case .null: return NSNull()
    }
}

/// Emits block YAML in the styles kubeadm and hand-written configs use, from a seeded generator.
private struct DocumentGenerator {
    var state: UInt64

    mutating func next(_ bound: Int) -> Int {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Int((state >> 33) % UInt64(bound))
    }

    static let plainScalars = ["kekd", "v2", "3s", "true", "0600", "--flag=/etc/k", "http://127.0.0.1:2379", "a b c",
                               "x:y", "it's", "a#b", "10.96.0.0/12", "-5", "1.5", "~x", "yes", "Node,RBAC"]
    static let quotedScalars = ["", "null", "a: b", " padded ", "# hash", "- dash", "[x]", "{y}", "quote \" in", "'single'",
                                "tab\there", "line\nbreak", "é ü 😀", "back\\slash", "&anchor", "*alias", "!tag", "|"]
    static let keys = ["name", "path", "apiVersion", "kind", "mountPath", "readOnly", "k8s.io/label", "key-with-dash"]

    mutating func scalar() -> String {
        switch next(4) {
        case 0, 1: return Self.plainScalars[next(Self.plainScalars.count)]
        case 2:
            let s = Self.quotedScalars[next(Self.quotedScalars.count)]
            if s.contains("\n") || s.contains("\t") { return doubleQuoted(s) }
            return "'" + s.replacingOccurrences(of: "'", with: "''") + "'"
        default: return doubleQuoted(Self.quotedScalars[next(Self.quotedScalars.count)])
        }
    }

    func doubleQuoted(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "é": out += "\\u00e9"
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }

    mutating func comment() -> String { next(5) == 0 ? "   # note" : "" }

    /// Lines of a block node at `indent`; `compactSequence` writes `- ` at the parent key's indentation.
    mutating func block(indent: Int, depth: Int) -> [String] {
        let pad = String(repeating: " ", count: indent)
        var lines: [String] = []
        if next(2) == 0 {
            var used = Set<String>()
            for _ in 0...next(4) {
                let key = Self.keys[next(Self.keys.count)]
                guard used.insert(key).inserted else { continue }
                lines += entry(prefix: pad + key + ":", indent: indent, depth: depth)
            }
        } else {
            for _ in 0...next(4) { lines += entry(prefix: pad + "-", indent: indent, depth: depth, isItem: true) }
        }
        return lines
    }

    private mutating func entry(prefix: String, indent: Int, depth: Int, isItem: Bool = false) -> [String] {
        let choice = depth >= 3 ? next(3) : next(7)
        switch choice {
        case 0, 1: return [prefix + " " + scalar() + comment()]
        case 2:
            let flows = ["[]", "{}", "[a, 'b', \"c\"]", "{k: v, 'q': \"w\"}", "[x, [y], {}]"]
            return [prefix + " " + flows[next(flows.count)]]
        case 3 where isItem:
            // `- key: v` with the rest of the mapping aligned after the dash.
            var nested = block(indent: indent + 2, depth: depth + 1)
            let first = nested[0]
            let start = first.index(first.startIndex, offsetBy: indent + 2)
            nested[0] = prefix + " " + first[start...]
            return nested
        case 4 where !isItem:
            // `key:` then `- item` at the key's own indentation, as kubeadm writes lists.
            var items: [String] = []
            for _ in 0...next(3) { items += entry(prefix: String(repeating: " ", count: indent) + "-", indent: indent, depth: depth + 1, isItem: true) }
            return [prefix + comment()] + items
        default:
            return [prefix + comment()] + block(indent: indent + 2 + next(2) * 2, depth: depth + 1)
        }
    }
}

@Suite("Differential against PyYAML", .enabled(if: python != nil, "KEKD_PYTHON is not set"))
struct YAMLDifferentialTests {
    static let handPicked = [
        Fixtures.kubeAPIServerManifest, Fixtures.encryptionConfiguration, Fixtures.adminConf,
        "a: 1\n---\nb: [x, y]\n...\n", "- a\n- - b\n  - c\n-\n  d: 1\n", "k: 'it''s'\nq: \"\\u00e9\\x41\\t\\\"\"\n",
        "a:   # comment\n  b: 1\n", "key: value # c\n# only comment\nother: ~\n", "x: {a: , b: null, 'c': [1, 2,]}\n",
        "empty:\nlist:\n- 1\n- 2\nnext: z\n", "- name: a\n  args:\n  - x\n  - y\n- name: b\n", "plain text\n",
    ]
    static let mustBeRejected = [
        "a: 1\n  b: 2\n", "a: 'open\n", "a: [1, 2\n", "a: b: c\n", "k: v\n- x\n", "- x\nk: v\n", "a:\n\tb: 1\n",
        "a: \"x\" y\n", "a:\n  - x\n - y\n", "a: \"x\\q\"\n",
    ]

    @Test func swiftAndPyYAMLAgree() throws {
        var cases: [[String: Any]] = []
        var documents = Self.handPicked
        var generator = DocumentGenerator(state: 0x59A4_1D0C)
        for _ in 0..<400 { documents.append(generator.block(indent: 0, depth: 0).joined(separator: "\n") + "\n") }
        for text in documents {
            let values = try YAML.parseDocuments(text)
            cases.append(["text": text, "expect": "valid", "swift": values.map(plainJSON)])
        }
        for text in Self.mustBeRejected {
            #expect(throws: YAMLError.self, "Swift accepted \(text.debugDescription)") { try YAML.parseDocuments(text) }
            cases.append(["text": text, "expect": "invalid", "swift": NSNull()])
        }
        let result = try runPython(cases)
        #expect(result.cases == cases.count)
        for mismatch in result.mismatches.prefix(10) { Issue.record(Comment(rawValue: mismatch)) }
        #expect(result.mismatches.isEmpty)
    }

    private func runPython(_ cases: [[String: Any]]) throws -> (cases: Int, mismatches: [String]) {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/yaml_differential.py")
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("yaml-diff-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let inputURL = directory.appendingPathComponent("input.json")
        let outputURL = directory.appendingPathComponent("output.json")
        try JSONSerialization.data(withJSONObject: cases).write(to: inputURL)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(python))
        process.arguments = [script.path, inputURL.path, outputURL.path]
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "yaml_differential.py failed")
        let output = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: outputURL)) as? [String: Any])
        return (output["cases"] as? Int ?? -1, output["mismatches"] as? [String] ?? ["no mismatches list"])
    }
}
