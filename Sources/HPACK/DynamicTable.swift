// RFC 7541 section 2.3.2: the dynamic table, a FIFO of entries bounded by total size.

struct TableEntry: Sendable {
    var field: HeaderField
    /// Octet length of the name as it was on the wire (the String may hold repaired UTF-8).
    var nameOctets: Int
    /// name + value octets + 32.
    var size: Int
}

/// A ring buffer of entries, newest at relative index 0. Evicted slots are cleared so their strings are freed.
struct DynamicTable: Sendable {
    private var slots: [TableEntry] = []
    private var oldest = 0
    private(set) var count = 0
    private(set) var size = 0
    private(set) var maxSize: Int

    private static let emptyEntry = TableEntry(field: HeaderField(name: "", value: ""), nameOctets: 0, size: 0)

    init(maxSize: Int) {
        self.maxSize = maxSize
    }

    /// Relative index 0 is the newest entry (absolute HPACK index 62).
    func entry(at relativeIndex: Int) -> TableEntry? {
        guard relativeIndex >= 0, relativeIndex < count else { return nil }
        var slot = oldest + count - 1 - relativeIndex
        if slot >= slots.count { slot -= slots.count }
        return slots[slot]
    }

    /// Newest first.
    var fields: [HeaderField] {
        (0..<count).compactMap { entry(at: $0)?.field }
    }

    /// Removes and returns the oldest entry.
    @discardableResult
    mutating func removeOldest() -> TableEntry? {
        guard count > 0 else { return nil }
        let entry = slots[oldest]
        slots[oldest] = Self.emptyEntry
        oldest += 1
        if oldest == slots.count { oldest = 0 }
        count -= 1
        size -= entry.size
        return entry
    }

    /// Changes the maximum and evicts until the table fits. Callers that index entries evict first themselves.
    mutating func setMaxSize(_ newMax: Int) {
        maxSize = newMax
        while size > maxSize { removeOldest() }
    }

    /// Adds an entry after evicting what does not fit; an entry larger than maxSize empties the table
    /// and is not added (RFC 7541 section 4.4). Returns whether it was added.
    @discardableResult
    mutating func insert(_ entry: TableEntry) -> Bool {
        while count > 0 && size + entry.size > maxSize { removeOldest() }
        guard entry.size <= maxSize else { return false }
        appendAssumingRoom(entry)
        return true
    }

    /// Appends without evicting; the caller has made room.
    mutating func appendAssumingRoom(_ entry: TableEntry) {
        if count == slots.count { grow() }
        var slot = oldest + count
        if slot >= slots.count { slot -= slots.count }
        slots[slot] = entry
        count += 1
        size += entry.size
    }

    private mutating func grow() {
        var newSlots: [TableEntry] = []
        newSlots.reserveCapacity(Swift.max(8, slots.count * 2))
        for relative in stride(from: count - 1, through: 0, by: -1) {
            if let entry = entry(at: relative) { newSlots.append(entry) }
        }
        while newSlots.count < newSlots.capacity { newSlots.append(Self.emptyEntry) }
        slots = newSlots
        oldest = 0
    }
}
