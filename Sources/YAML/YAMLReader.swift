// A reader for the block-style YAML subset that kubeconfig, EncryptionConfiguration and static pod manifests use:
// block mappings and sequences (including `- ` at the parent key's indentation), plain, single- and double-quoted
// scalars on one line, comments, one-line flow collections (`[]`, `{}`, `[a, "b"]`, `{k: v}`) and `---` documents.
// Everything else (anchors, aliases, tags, block scalars, multi-line scalars, tabs as indentation, duplicate
// keys) is refused with the line and column, rather than read differently from kube-apiserver.

public enum YAML {
    /// Reads a single document (an empty text reads as `.null`); several documents are an error.
    public static func parse(_ text: String) throws(YAMLError) -> YAMLValue {
        let documents = try parseDocuments(text)
        guard documents.count <= 1 else {
            throw YAMLError(line: 1, column: 1, message: "expected one document, found \(documents.count)")
        }
        return documents.first ?? .null
    }

    /// Reads every document of a `---`-separated stream, in order.
    public static func parseDocuments(_ text: String) throws(YAMLError) -> [YAMLValue] {
        var documents: [YAMLValue] = []
        for lines in try splitDocuments(Array(text.utf8)) {
            var parser = BlockParser(lines: lines)
            documents.append(try parser.parseDocument())
        }
        return documents
    }

    /// Content lines (blank and comment-only lines dropped) grouped by document.
    private static func splitDocuments(_ text: [UInt8]) throws(YAMLError) -> [[Line]] {
        var documents: [[Line]] = []
        var current: [Line] = []
        var open = false  // whether `current` is a document (explicit `---` or content seen)
        var bytes = text[...]
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }
        var number = 0
        for raw in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            var line = Array(raw)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            var start = 0
            while start < line.count, line[start] == .space { start += 1 }
            var firstNonBlank = start
            while firstNonBlank < line.count, isBlank(line[firstNonBlank]) { firstNonBlank += 1 }
            if firstNonBlank == line.count || line[firstNonBlank] == UInt8(ascii: "#") { continue }
            if firstNonBlank != start {
                throw YAMLError(line: number, column: start + 1, message: "a tab is not allowed in indentation")
            }
            if start == 0, isMarker(line, "---") {
                if open { documents.append(current) }
                current = []
                open = true
                var rest = 3
                while rest < line.count, isBlank(line[rest]) { rest += 1 }
                if rest < line.count, line[rest] != UInt8(ascii: "#") {
                    throw YAMLError(line: number, column: rest + 1, message: "content on the '---' line is not supported")
                }
                continue
            }
            if start == 0, isMarker(line, "...") {
                if open { documents.append(current) }
                current = []
                open = false
                continue
            }
            if start == 0, line[0] == UInt8(ascii: "%") {
                throw YAMLError(line: number, column: 1, message: "directives ('%') are not supported")
            }
            current.append(Line(number: number, bytes: line, start: start))
            open = true
        }
        if open { documents.append(current) }
        return documents
    }

    private static func isMarker(_ line: [UInt8], _ marker: String) -> Bool {
        let m = Array(marker.utf8)
        return line.starts(with: m) && (line.count == m.count || isBlank(line[m.count]))
    }
}

/// One content line; `start` is where its content begins, which is also its indentation. A sequence item's content
/// (`- key: v`) becomes a line of its own starting after the dash, so nested blocks need no special case.
struct Line {
    var number: Int
    var bytes: [UInt8]
    var start: Int
    var indent: Int { start }
}

extension UInt8 {
    static let space = UInt8(ascii: " ")
    static let tab = UInt8(ascii: "\t")
}

func isBlank(_ c: UInt8) -> Bool { c == .space || c == .tab }

struct BlockParser {
    var lines: [Line]
    var i = 0

    init(lines: [Line]) { self.lines = lines }

    mutating func parseDocument() throws(YAMLError) -> YAMLValue {
        guard !lines.isEmpty else { return .null }
        let value = try parseBlock(parentIndent: -1)
        if i < lines.count { throw error(lines[i], lines[i].start, "unexpected content at a lower indentation") }
        return value
    }

    /// Nesting deeper than any configuration needs is refused rather than recursed into (stack safety).
    static let maxDepth = 64
    private var depth = 0

    /// A node whose first line (lines[i]) is indented deeper than its parent.
    private mutating func parseBlock(parentIndent: Int) throws(YAMLError) -> YAMLValue {
        let line = lines[i]
        depth += 1
        defer { depth -= 1 }
        if depth > Self.maxDepth { throw error(line, line.start, "nested deeper than \(Self.maxDepth) levels") }
        if isSequenceItem(line) { return try parseSequence(indent: line.indent) }
        if try mappingKey(line) != nil { return try parseMapping(indent: line.indent) }
        var reader = LineReader(line: line, pos: line.start)
        let value = try reader.inlineValue()
        i += 1
        if i < lines.count, lines[i].indent > parentIndent {
            throw error(lines[i], lines[i].start, "a scalar cannot continue on the next line (multi-line scalars are not supported)")
        }
        return value
    }

    private mutating func parseMapping(indent: Int) throws(YAMLError) -> YAMLValue {
        var entries: [(key: String, value: YAMLValue)] = []
        while i < lines.count {
            let line = lines[i]
            if line.indent < indent { break }
            if line.indent > indent { throw error(line, line.start, "unexpected indentation") }
            if isSequenceItem(line) { throw error(line, line.start, "a sequence item where a 'key: value' entry was expected") }
            guard let (key, afterColon) = try mappingKey(line) else {
                throw error(line, line.start, "expected a 'key: value' entry")
            }
            if entries.contains(where: { $0.key == key }) { throw error(line, line.start, "duplicate key '\(key)'") }
            var reader = LineReader(line: line, pos: afterColon)
            reader.skipBlanks()
            i += 1
            let value: YAMLValue
            if reader.atEndOrComment {
                if i < lines.count, lines[i].indent > indent {
                    value = try parseBlock(parentIndent: indent)
                } else if i < lines.count, lines[i].indent == indent, isSequenceItem(lines[i]) {
                    value = try parseSequence(indent: indent)  // `key:` then `- item` at the key's indentation
                } else {
                    value = .null
                }
            } else {
                value = try reader.inlineValue()
            }
            entries.append((key, value))
        }
        return .mapping(entries)
    }

    private mutating func parseSequence(indent: Int) throws(YAMLError) -> YAMLValue {
        var items: [YAMLValue] = []
        while i < lines.count {
            let line = lines[i]
            if line.indent < indent { break }
            if line.indent > indent { throw error(line, line.start, "unexpected indentation") }
            guard isSequenceItem(line) else { break }
            var content = line.start + 1
            while content < line.bytes.count, isBlank(line.bytes[content]) { content += 1 }
            if content == line.bytes.count || line.bytes[content] == UInt8(ascii: "#") {
                i += 1
                items.append(i < lines.count && lines[i].indent > indent ? try parseBlock(parentIndent: indent) : .null)
            } else {
                if line.bytes[content - 1] == .tab {
                    throw error(line, content - 1, "a tab is not allowed in indentation")
                }
                lines[i].start = content
                items.append(try parseBlock(parentIndent: indent))
            }
        }
        return .sequence(items)
    }

    private func isSequenceItem(_ line: Line) -> Bool {
        line.bytes[line.start] == UInt8(ascii: "-")
            && (line.start + 1 == line.bytes.count || isBlank(line.bytes[line.start + 1]))
    }

    /// The key of a `key: value` line and the index just past its colon, or nil when the line is not one.
    private func mappingKey(_ line: Line) throws(YAMLError) -> (String, Int)? {
        let b = line.bytes
        let first = b[line.start]
        if first == UInt8(ascii: "?"), line.start + 1 == b.count || isBlank(b[line.start + 1]) {
            throw error(line, line.start, "complex mapping keys ('?') are not supported")
        }
        if first == UInt8(ascii: "\"") || first == UInt8(ascii: "'") {
            var reader = LineReader(line: line, pos: line.start)
            let key = try reader.quoted()
            reader.skipBlanks()
            guard reader.pos < b.count, b[reader.pos] == UInt8(ascii: ":"),
                  reader.pos + 1 == b.count || isBlank(b[reader.pos + 1]) else { return nil }
            return (key, reader.pos + 1)
        }
        if first == UInt8(ascii: "[") || first == UInt8(ascii: "{") { return nil }
        var j = line.start
        while j < b.count {
            if b[j] == UInt8(ascii: "#"), j > line.start, isBlank(b[j - 1]) { return nil }
            if b[j] == UInt8(ascii: ":"), j + 1 == b.count || isBlank(b[j + 1]) {
                var end = j
                while end > line.start, isBlank(b[end - 1]) { end -= 1 }
                if end == line.start { throw error(line, line.start, "a mapping entry without a key") }
                let reader = LineReader(line: line, pos: line.start)
                try reader.checkPlainStart()
                return (String(decoding: b[line.start..<end], as: UTF8.self), j + 1)
            }
            j += 1
        }
        return nil
    }

    private func error(_ line: Line, _ index: Int, _ message: String) -> YAMLError {
        YAMLError(line: line.number, column: index + 1, message: message)
    }
}

/// Reads values within one line: quoted and plain scalars, one-line flow collections, trailing comments.
struct LineReader {
    let line: Line
    var pos: Int

    init(line: Line, pos: Int) {
        self.line = line
        self.pos = pos
    }

    private var b: [UInt8] { line.bytes }
    private var atEnd: Bool { pos >= b.count }
    private var current: UInt8 { b[pos] }

    var atEndOrComment: Bool { atEnd || current == UInt8(ascii: "#") }

    mutating func skipBlanks() { while !atEnd, isBlank(current) { pos += 1 } }

    func error(_ message: String, at index: Int? = nil) -> YAMLError {
        YAMLError(line: line.number, column: (index ?? pos) + 1, message: message)
    }

    /// A block-context value that fills the rest of the line (a trailing comment is allowed).
    mutating func inlineValue() throws(YAMLError) -> YAMLValue {
        let value: YAMLValue
        switch current {
        case UInt8(ascii: "\""), UInt8(ascii: "'"): value = .scalar(try quoted())
        case UInt8(ascii: "["), UInt8(ascii: "{"): value = try flow()
        default:
            if current == UInt8(ascii: "-"), pos + 1 == b.count || isBlank(b[pos + 1]) {
                throw error("a block sequence cannot start on the line of its key")
            }
            try checkPlainStart()
            let start = pos
            var end = pos
            while !atEnd {
                if current == UInt8(ascii: "#"), isBlank(b[pos - 1]) { break }
                if current == UInt8(ascii: ":"), pos + 1 == b.count || isBlank(b[pos + 1]) {
                    throw error("a ': ' inside a plain value (quote the value)")
                }
                pos += 1
                if !isBlank(b[pos - 1]) { end = pos }
            }
            return plain(b[start..<end])
        }
        skipBlanks()
        guard atEndOrComment else { throw error("unexpected text after the value") }
        return value
    }

    /// Refuses the indicators this reader does not implement, naming them.
    func checkPlainStart() throws(YAMLError) {
        switch current {
        case UInt8(ascii: "&"): throw error("anchors ('&') are not supported")
        case UInt8(ascii: "*"): throw error("aliases ('*') are not supported")
        case UInt8(ascii: "!"): throw error("tags ('!') are not supported")
        case UInt8(ascii: "|"), UInt8(ascii: ">"): throw error("block scalars ('|', '>') are not supported")
        case UInt8(ascii: "%"), UInt8(ascii: "@"), UInt8(ascii: "`"):
            throw error("'\(Character(Unicode.Scalar(current)))' cannot start a plain value (quote it)")
        case UInt8(ascii: "?"), UInt8(ascii: ":"), UInt8(ascii: "-"):
            if pos + 1 == b.count || isBlank(b[pos + 1]) {
                throw error("'\(Character(Unicode.Scalar(current)))' followed by a space cannot start a plain value (quote it)")
            }
        case UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: ","):
            throw error("'\(Character(Unicode.Scalar(current)))' cannot start a plain value (quote it)")
        default: break
        }
    }

    private func plain(_ bytes: ArraySlice<UInt8>) -> YAMLValue {
        let text = String(decoding: bytes, as: UTF8.self)
        switch text {
        case "~", "null", "Null", "NULL": return .null
        default: return .scalar(text)
        }
    }

    /// A single- or double-quoted scalar starting at `pos`; it must end on this line.
    mutating func quoted() throws(YAMLError) -> String {
        let quote = current
        let opening = pos
        pos += 1
        var out: [UInt8] = []
        while true {
            guard !atEnd else {
                throw error("unterminated quoted value (quoted values must end on their line)", at: opening)
            }
            let c = current
            if c == quote {
                if quote == UInt8(ascii: "'"), pos + 1 < b.count, b[pos + 1] == quote {
                    out.append(quote)
                    pos += 2
                    continue
                }
                pos += 1
                return String(decoding: out, as: UTF8.self)
            }
            if c == UInt8(ascii: "\\"), quote == UInt8(ascii: "\"") {
                try escape(into: &out)
                continue
            }
            out.append(c)
            pos += 1
        }
    }

    private mutating func escape(into out: inout [UInt8]) throws(YAMLError) {
        let backslash = pos
        pos += 1
        guard !atEnd else { throw error("unterminated quoted value (quoted values must end on their line)", at: backslash) }
        let simple: [UInt8: UInt32] = [
            UInt8(ascii: "0"): 0, UInt8(ascii: "a"): 7, UInt8(ascii: "b"): 8, UInt8(ascii: "t"): 9, .tab: 9,
            UInt8(ascii: "n"): 10, UInt8(ascii: "v"): 11, UInt8(ascii: "f"): 12, UInt8(ascii: "r"): 13,
            UInt8(ascii: "e"): 0x1B, .space: 0x20, UInt8(ascii: "\""): 0x22, UInt8(ascii: "/"): 0x2F,
            UInt8(ascii: "\\"): 0x5C, UInt8(ascii: "N"): 0x85, UInt8(ascii: "_"): 0xA0,
            UInt8(ascii: "L"): 0x2028, UInt8(ascii: "P"): 0x2029,
        ]
        let code: UInt32
        if let value = simple[current] {
            code = value
            pos += 1
        } else {
            let digits: Int
            switch current {
            case UInt8(ascii: "x"): digits = 2
            case UInt8(ascii: "u"): digits = 4
            case UInt8(ascii: "U"): digits = 8
            default: throw error("unknown escape '\\\(Character(Unicode.Scalar(current)))'", at: backslash)
            }
            pos += 1
            var value: UInt32 = 0
            for _ in 0..<digits {
                guard !atEnd, let digit = hexValue(current) else {
                    throw error("an escape needs \(digits) hex digits", at: backslash)
                }
                value = value << 4 | digit
                pos += 1
            }
            code = value
        }
        guard let scalar = Unicode.Scalar(code) else { throw error("escape names no Unicode character", at: backslash) }
        out.append(contentsOf: Array(String(Character(scalar)).utf8))
    }

    private func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(c - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    // MARK: flow collections (one line)

    private static let flowIndicators: Set<UInt8> = [UInt8(ascii: ","), UInt8(ascii: "["), UInt8(ascii: "]"),
                                                     UInt8(ascii: "{"), UInt8(ascii: "}")]

    private var flowDepth = 0

    private mutating func flow() throws(YAMLError) -> YAMLValue {
        let opening = pos
        flowDepth += 1
        defer { flowDepth -= 1 }
        if flowDepth > BlockParser.maxDepth { throw error("nested deeper than \(BlockParser.maxDepth) levels") }
        let isSequence = current == UInt8(ascii: "[")
        let close = isSequence ? UInt8(ascii: "]") : UInt8(ascii: "}")
        pos += 1
        var items: [YAMLValue] = []
        var entries: [(key: String, value: YAMLValue)] = []
        while true {
            skipBlanks()
            guard !atEnd else { throw error("flow collections must close on their line", at: opening) }
            if current == close { pos += 1; break }
            if isSequence {
                items.append(try flowNode())
                skipBlanks()
                if !atEnd, current == UInt8(ascii: ":") {
                    throw error("mappings inside a flow sequence are not supported")
                }
            } else {
                let keyStart = pos
                let key: String
                if current == UInt8(ascii: "\"") || current == UInt8(ascii: "'") {
                    key = try quoted()
                } else if current == UInt8(ascii: "[") || current == UInt8(ascii: "{") {
                    throw error("a collection as a mapping key is not supported")
                } else {
                    guard case .scalar(let text) = try flowPlain() else {
                        throw error("a null mapping key is not supported", at: keyStart)
                    }
                    key = text
                }
                if entries.contains(where: { $0.key == key }) { throw error("duplicate key '\(key)'", at: keyStart) }
                skipBlanks()
                var value = YAMLValue.null
                if !atEnd, current == UInt8(ascii: ":") {
                    pos += 1
                    skipBlanks()
                    if !atEnd, current != UInt8(ascii: ","), current != close { value = try flowNode() }
                }
                entries.append((key, value))
            }
            skipBlanks()
            guard !atEnd else { throw error("flow collections must close on their line", at: opening) }
            if current == UInt8(ascii: ",") { pos += 1; continue }
            if current == close { pos += 1; break }
            throw error("expected ',' or '\(Character(Unicode.Scalar(close)))'")
        }
        return isSequence ? .sequence(items) : .mapping(entries)
    }

    private mutating func flowNode() throws(YAMLError) -> YAMLValue {
        switch current {
        case UInt8(ascii: "\""), UInt8(ascii: "'"): return .scalar(try quoted())
        case UInt8(ascii: "["), UInt8(ascii: "{"): return try flow()
        default: return try flowPlain()
        }
    }

    /// A plain scalar inside a flow collection: it ends at a flow indicator, a `: ` or a comment.
    private mutating func flowPlain() throws(YAMLError) -> YAMLValue {
        try checkPlainStart()
        let start = pos
        var end = pos
        while !atEnd {
            let c = current
            if Self.flowIndicators.contains(c) { break }
            if c == UInt8(ascii: "#"), pos > start, isBlank(b[pos - 1]) {
                throw error("a comment inside a flow collection is not supported")
            }
            if c == UInt8(ascii: ":"), pos + 1 == b.count || isBlank(b[pos + 1]) || Self.flowIndicators.contains(b[pos + 1]) {
                break
            }
            pos += 1
            if !isBlank(c) { end = pos }
        }
        guard end > start else { throw error("expected a value", at: start) }
        return plain(b[start..<end])
    }
}
