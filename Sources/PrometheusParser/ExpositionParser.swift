// A strict reader of the Prometheus text format, independent of the writer: the metrics tests check kekd's own
// output with it, and `kekctl rotate-cluster` reads kube-apiserver's /metrics (the KMS key_id_hash metric) with it.

public struct ParsedSample: Equatable, Sendable {
    public var name: String
    public var labels: [String: String]
    public var value: Double
}

public struct ParsedExposition: Sendable {
    public var samples: [ParsedSample] = []
    public var types: [String: String] = [:]     // family name -> counter | gauge | histogram | summary | untyped
    public var helps: [String: String] = [:]

    public func values(_ name: String, where match: [String: String] = [:]) -> [Double] {
        samples.filter { s in s.name == name && match.allSatisfy { s.labels[$0.key] == $0.value } }.map(\.value)
    }

    public func value(_ name: String, _ match: [String: String] = [:]) -> Double? {
        let found = values(name, where: match)
        return found.count == 1 ? found[0] : nil
    }
}

public struct ExpositionError: Error, Sendable, CustomStringConvertible {
    public var line: Int
    public var text: String
    public var reason: String
    public var description: String { "line \(line): \(reason): \(text)" }
}

public enum ExpositionParser {
    /// Parses every line or throws on the first one that is not exactly HELP, TYPE or a sample whose family
    /// was declared (HELP then TYPE) before it. Duplicate series and redeclared families are errors too.
    public static func parse(_ text: String) throws -> ParsedExposition {
        let helpLine = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/
        let typeLine = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/
        let sampleLine = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)(?: -?[0-9]+)?$/
        let number = /^(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)|\+Inf|-Inf|NaN)$/
        var result = ParsedExposition()
        var seenSeries = Set<String>()
        guard text.hasSuffix("\n") else { throw ExpositionError(line: 0, text: "", reason: "no final newline") }
        for (index, raw) in text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(raw)
            let fail = { (reason: String) in ExpositionError(line: index + 1, text: line, reason: reason) }
            if let m = line.wholeMatch(of: helpLine) {
                let name = String(m.1)
                guard result.helps[name] == nil else { throw fail("family declared twice") }
                result.helps[name] = String(m.2)
            } else if let m = line.wholeMatch(of: typeLine) {
                let name = String(m.1)
                guard result.helps[name] != nil else { throw fail("TYPE without HELP before it") }
                guard result.types[name] == nil else { throw fail("TYPE given twice") }
                result.types[name] = String(m.2)
            } else if let m = line.wholeMatch(of: sampleLine) {
                let name = String(m.1)
                guard let family = familyName(of: name, types: result.types) else {
                    throw fail("sample of an undeclared family")
                }
                guard String(m.3).wholeMatch(of: number) != nil, let value = parseNumber(String(m.3)) else {
                    throw fail("bad value")
                }
                let labels = try m.2.map { try parseLabels(String($0)) } ?? [:]
                if result.types[family] == "histogram", name.hasSuffix("_bucket"), labels["le"] == nil {
                    throw fail("bucket without le")
                }
                let identity = name + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                guard seenSeries.insert(identity).inserted else { throw fail("duplicate series") }
                result.samples.append(ParsedSample(name: name, labels: labels, value: value))
            } else {
                throw fail("not a HELP, TYPE or sample line")
            }
        }
        return result
    }

    public static func familyName(of sample: String, types: [String: String]) -> String? {
        if types[sample] != nil { return sample }
        for suffix in ["_bucket", "_sum", "_count"] where sample.hasSuffix(suffix) {
            let base = String(sample.dropLast(suffix.count))
            if types[base] == "histogram" || (types[base] == "summary" && suffix != "_bucket") { return base }
        }
        return nil
    }

    public static func parseNumber(_ text: String) -> Double? {
        switch text {
        case "+Inf": .infinity
        case "-Inf": -.infinity
        case "NaN": .nan
        default: Double(text)
        }
    }

    /// `name="value",...` with the three escapes `\\`, `\"`, `\n`; anything else after a backslash is an error.
    public static func parseLabels(_ text: String) throws -> [String: String] {
        var labels: [String: String] = [:]
        var chars = Array(text.unicodeScalars)[...]
        func err(_ reason: String) -> ExpositionError { ExpositionError(line: 0, text: text, reason: reason) }
        while !chars.isEmpty {
            var name = ""
            while let c = chars.first, c != "=" {
                guard c.properties.isASCIIHexDigit || ("a"..."z").contains(c) || ("A"..."Z").contains(c)
                        || ("0"..."9").contains(c) || c == "_" else { throw err("bad label name") }
                name.unicodeScalars.append(c)
                chars.removeFirst()
            }
            guard !name.isEmpty, chars.popFirst() == "=", chars.popFirst() == "\"" else { throw err("expected =\"") }
            var value = ""
            var closed = false
            while let c = chars.popFirst() {
                if c == "\"" { closed = true; break }
                if c == "\n" { throw err("raw newline in label value") }
                if c == "\\" {
                    switch chars.popFirst() {
                    case "\\": value += "\\"
                    case "\"": value += "\""
                    case "n": value += "\n"
                    default: throw err("bad escape")
                    }
                } else {
                    value.unicodeScalars.append(c)
                }
            }
            guard closed else { throw err("unterminated label value") }
            guard labels.updateValue(value, forKey: name) == nil else { throw err("label repeated") }
            if let c = chars.first {
                guard c == "," else { throw err("expected ,") }
                chars.removeFirst()
            }
        }
        return labels
    }
}
