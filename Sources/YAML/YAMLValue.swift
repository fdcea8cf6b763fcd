// The value a YAML document reads as. Scalars stay strings: the caller decides what a field means
// (`"true"`, `"3s"`, `"0600"`), so nothing is lost to YAML 1.1's guesses about booleans and octals.

public enum YAMLValue: Sendable, Equatable {
    /// A mapping in document order (keys are unique: a duplicate key is a parse error).
    case mapping([(key: String, value: YAMLValue)])
    case sequence([YAMLValue])
    case scalar(String)
    /// An empty value, `~` or an unquoted `null`.
    case null

    public static func == (lhs: YAMLValue, rhs: YAMLValue) -> Bool {
        switch (lhs, rhs) {
        case (.mapping(let a), .mapping(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case (.sequence(let a), .sequence(let b)): return a == b
        case (.scalar(let a), .scalar(let b)): return a == b
        case (.null, .null): return true
        default: return false
        }
    }

    /// The value under `key` when this is a mapping holding it.
    public subscript(key: String) -> YAMLValue? {
        guard case .mapping(let entries) = self else { return nil }
        return entries.first(where: { $0.key == key })?.value
    }

    /// The element at `index` when this is a sequence that long.
    public subscript(index: Int) -> YAMLValue? {
        guard case .sequence(let items) = self, items.indices.contains(index) else { return nil }
        return items[index]
    }

    public var string: String? {
        if case .scalar(let s) = self { return s }
        return nil
    }

    public var sequence: [YAMLValue]? {
        if case .sequence(let items) = self { return items }
        return nil
    }

    public var entries: [(key: String, value: YAMLValue)]? {
        if case .mapping(let entries) = self { return entries }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

/// Why a document was refused, with the 1-based line and column where the reader stopped.
public struct YAMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public var message: String

    public init(line: Int, column: Int, message: String) {
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String { "line \(line), column \(column): \(message)" }
}
