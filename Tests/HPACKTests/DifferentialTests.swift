// Differential test against the Python `hpack` library (Tests/Interop/hpack_differential.py), in both directions,
// plus mutated blocks that both decoders must accept or reject alike. One Python process runs every case.
import Foundation
import Testing
import HPACK

private struct DiffInput: Codable {
    var cases: [DiffCase]
    var fuzz: [[String]]
}

private struct DiffCase: Codable {
    var huffman: Bool
    var steps: [DiffStep]
}

private struct DiffStep: Codable {
    var tableSize: Int?
    var headers: [[String]]
    var swiftBlock: String
}

private struct DiffOutput: Codable {
    var cases: [DiffCaseResult]
    var fuzz: [[BlockResult]]
}

private struct DiffCaseResult: Codable {
    var pythonBlocks: [String]
    var pythonDecoded: [BlockResult]
}

private struct BlockResult: Codable {
    var headers: [[String]]?
    var error: String?
}

private func hexPairs(_ list: [HeaderField]) -> [[String]] {
    list.map { [hex($0.name.utf8), hex($0.value.utf8)] }
}

/// What a Swift decoder makes of octets (invalid UTF-8 is replaced), for comparing Python's raw bytes.
private func asFields(_ pairs: [[String]]) -> [HeaderField] {
    pairs.map {
        HeaderField(name: String(decoding: bytes(hex: $0[0]), as: UTF8.self),
                    value: String(decoding: bytes(hex: $0[1]), as: UTF8.self))
    }
}

private let python = ProcessInfo.processInfo.environment["KEKD_PYTHON"]

@Suite("Differential against Python hpack", .enabled(if: python != nil, "KEKD_PYTHON is not set"))
struct DifferentialTests {
    static let caseCount = 400
    static let stepsPerCase = 15
    static let fuzzCount = 4000
    static let preEncoded = [
        PreEncodedHeaders([HeaderField(name: ":status", value: "200"), HeaderField(name: "content-type", value: "application/grpc")]),
        PreEncodedHeaders([HeaderField(name: "grpc-status", value: "0")]),
        PreEncodedHeaders([HeaderField(name: "x-fixed", value: String(repeating: "v", count: 300)), HeaderField(name: "grpc-status", value: "0")]),
    ]

    @Test func swiftAndPythonAgree() throws {
        var generator = HeaderListGenerator(seed: 0xD1FF)
        var input = DiffInput(cases: [], fuzz: [])
        var expected: [[[HeaderField]]] = []
        for caseNumber in 0..<Self.caseCount {
            let huffman = caseNumber % 2 == 0
            var encoder = HPACKEncoder(useHuffman: huffman)
            var diffCase = DiffCase(huffman: huffman, steps: [])
            var lists: [[HeaderField]] = []
            for _ in 0..<Self.stepsPerCase {
                var tableSize: Int?
                if Int.random(in: 0..<6, using: &generator.rng) == 0 {
                    tableSize = generator.tableSize()
                    encoder.setMaxTableSize(tableSize!)
                }
                var list = lists.last.map { Int.random(in: 0..<2, using: &generator.rng) == 0 ? generator.next(after: $0) : generator.list() } ?? generator.list()
                var block: [UInt8] = []
                // A server's fixed lists between the others: indices while their entries live, re-inserted after.
                if Int.random(in: 0..<3, using: &generator.rng) == 0 {
                    let pre = Self.preEncoded[Int.random(in: 0..<Self.preEncoded.count, using: &generator.rng)]
                    list = pre.fields
                    encoder.encode(pre, into: &block)
                } else {
                    encoder.encode(list, into: &block)
                }
                diffCase.steps.append(DiffStep(tableSize: tableSize, headers: hexPairs(list), swiftBlock: hex(block)))
                lists.append(list)
            }
            input.cases.append(diffCase)
            expected.append(lists)
        }
        input.fuzz = mutatedSequences(&generator)

        let output = try runPython(input)
        try #require(output.cases.count == input.cases.count)
        try #require(output.fuzz.count == input.fuzz.count)

        var mismatches = 0
        for (caseNumber, result) in output.cases.enumerated() {
            // Python encoded -> Swift decodes, following the same SETTINGS changes.
            var decoder = HPACKDecoder(maxHeaderListSize: 1 << 30)
            for (step, pythonBlock) in result.pythonBlocks.enumerated() {
                if let size = input.cases[caseNumber].steps[step].tableSize { decoder.setMaxTableSizeLimit(size) }
                let decoded = decodeResult(&decoder, bytes(hex: pythonBlock))
                if decoded != .success(expected[caseNumber][step]) {
                    mismatches += 1
                    Issue.record("case \(caseNumber) step \(step): Swift decoded Python's \(pythonBlock) as \(decoded)")
                    break
                }
            }
            // Swift encoded -> Python decoded.
            for (step, pythonResult) in result.pythonDecoded.enumerated()
            where pythonResult.headers != input.cases[caseNumber].steps[step].headers {
                mismatches += 1
                Issue.record("case \(caseNumber) step \(step): Python decoded Swift's block as \(pythonResult)")
                break
            }
            if mismatches > 10 { return }
        }

        var accepted = 0
        for (number, sequence) in input.fuzz.enumerated() {
            var decoder = HPACKDecoder(maxHeaderListSize: 1 << 30)
            for (step, block) in sequence.enumerated() {
                let pythonResult = step < output.fuzz[number].count ? output.fuzz[number][step] : nil
                let swiftResult = decodeResult(&decoder, bytes(hex: block))
                switch (swiftResult, pythonResult?.headers) {
                case (.success(let list), let pythonHeaders?):
                    accepted += 1
                    #expect(list == asFields(pythonHeaders), "fuzz \(number) block \(step) \(block)")
                case (.failure, nil):
                    break
                default:
                    Issue.record("fuzz \(number) block \(step) \(block): Swift \(swiftResult), Python \(String(describing: pythonResult))")
                }
                if case .failure = swiftResult { break }
            }
        }
        // The mutations must leave a fair share of valid blocks, or the comparison proves little.
        #expect(accepted > Self.fuzzCount / 4)
    }

    /// Sequences of a valid block then a mutated one (bit flip, byte change, cut, insertion), sharing a table.
    private func mutatedSequences(_ generator: inout HeaderListGenerator) -> [[String]] {
        var sequences: [[String]] = []
        for _ in 0..<Self.fuzzCount {
            var encoder = HPACKEncoder(useHuffman: Bool.random(using: &generator.rng))
            var first: [UInt8] = []
            encoder.encode(generator.list(), into: &first)
            var second: [UInt8] = []
            encoder.encode(generator.list(), into: &second)
            if !second.isEmpty {
                let at = Int.random(in: 0..<second.count, using: &generator.rng)
                switch Int.random(in: 0..<4, using: &generator.rng) {
                case 0: second[at] ^= 1 << UInt8.random(in: 0...7, using: &generator.rng)
                case 1: second[at] = UInt8.random(in: 0...255, using: &generator.rng)
                case 2: second.removeSubrange(at...)
                default: second.insert(UInt8.random(in: 0...255, using: &generator.rng), at: at)
                }
            }
            sequences.append([hex(first), hex(second)])
        }
        return sequences
    }

    private func runPython(_ input: DiffInput) throws -> DiffOutput {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/hpack_differential.py")
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("hpack-diff-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let inputURL = directory.appendingPathComponent("input.json")
        let outputURL = directory.appendingPathComponent("output.json")
        try JSONEncoder().encode(input).write(to: inputURL)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(python))
        process.arguments = [script.path, inputURL.path, outputURL.path]
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "hpack_differential.py failed")
        return try JSONDecoder().decode(DiffOutput.self, from: Data(contentsOf: outputURL))
    }
}
