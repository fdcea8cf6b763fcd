// Per-stream tables keyed by stream id, looked up several times per frame: an open-addressing table that hashes an
// id with one multiplication (Fibonacci hashing) instead of `Hasher` (SipHash), which dominated the lookups.

/// A map from stream id (never 0) to a value with `Dictionary`'s subscript semantics, for the few dozen streams a
/// connection has open. Linear probing with backward-shift deletion (no tombstones). Ids are scattered, not placed
/// by their position in the sequence: live streams' consecutive ids would form one probe run that every deletion
/// walks to its end.
@frozen
public struct StreamIDMap<Value> {
    /// 0 marks an empty slot (stream 0 is the connection and never has an entry).
    @usableFromInline var keys: [UInt32]
    @usableFromInline var slots: [Value?]
    @usableFromInline var occupied: Int

    @inlinable public var count: Int { occupied }

    @inlinable
    public init() {
        occupied = 0
        keys = Array(repeating: 0, count: 16)
        slots = Array(repeating: nil, count: 16)
    }

    @inlinable var mask: Int { keys.count - 1 }

    @inlinable @inline(__always)
    func home(_ id: UInt32) -> Int { Int(truncatingIfNeeded: (UInt64(id) &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask }

    /// The slot holding `id`, or nil.
    @inlinable @inline(__always)
    func slot(of id: UInt32) -> Int? {
        var index = home(id)
        while true {
            let key = keys[index]
            if key == 0 { return nil }
            if key == id { return index }
            index = (index + 1) & mask
        }
    }

    @inlinable public var isEmpty: Bool { count == 0 }

    @inlinable public subscript(id: UInt32) -> Value? {
        // Borrowed, so reading one property of a value does not copy the whole value.
        _read {
            if let index = slot(of: id) { yield slots[index] } else { yield nil }
        }
        set {
            if let newValue { insert(id, newValue) } else { removeValue(forKey: id) }
        }
        // In place, so a value holding arrays is not copied (and its arrays not duplicated) on every mutation.
        _modify {
            if let index = slot(of: id) {
                yield &slots[index]
                if slots[index] == nil { remove(at: index) }
            } else {
                var value: Value? = nil
                yield &value
                if let value { insert(id, value) }
            }
        }
    }

    @inlinable public func contains(_ id: UInt32) -> Bool { slot(of: id) != nil }

    @inlinable mutating func insert(_ id: UInt32, _ value: Value) {
        precondition(id != 0, "stream 0 has no entry")
        if (occupied + 1) * 4 > keys.count * 3 { grow() }
        var index = home(id)
        while true {
            let key = keys[index]
            if key == id {
                slots[index] = value
                return
            }
            if key == 0 {
                keys[index] = id
                slots[index] = value
                occupied += 1
                return
            }
            index = (index + 1) & mask
        }
    }

    @inlinable @discardableResult
    public mutating func removeValue(forKey id: UInt32) -> Value? {
        guard let index = slot(of: id) else { return nil }
        let value = slots[index]
        remove(at: index)
        return value
    }

    /// Removes and returns the value for `id` when `condition` holds for it, with one lookup.
    @inlinable @discardableResult
    public mutating func removeValue(forKey id: UInt32, if condition: (Value) -> Bool) -> Value? {
        guard let index = slot(of: id), let value = slots[index], condition(value) else { return nil }
        remove(at: index)
        return value
    }

    /// Empties `index` and shifts later members of its probe run back, so lookups never meet a hole early.
    @inlinable mutating func remove(at index: Int) {
        var hole = index
        var next = (index + 1) & mask
        while keys[next] != 0 {
            let wanted = home(keys[next])
            // Move the entry into the hole unless its home lies cyclically in (hole, next].
            let distanceToNext = (next - wanted) & mask
            let distanceToHole = (next - hole) & mask
            if distanceToNext >= distanceToHole {
                keys[hole] = keys[next]
                slots.swapAt(hole, next)
                hole = next
            }
            next = (next + 1) & mask
        }
        keys[hole] = 0
        slots[hole] = nil
        occupied -= 1
    }

    @usableFromInline mutating func grow() {
        let oldKeys = keys
        var oldSlots: [Value?] = []
        swap(&oldSlots, &slots)
        keys = Array(repeating: 0, count: oldKeys.count * 2)
        slots = Array(repeating: nil, count: oldKeys.count * 2)
        occupied = 0
        for (index, key) in oldKeys.enumerated() where key != 0 {
            if let value = oldSlots[index] { insert(key, value) }
        }
    }

    @inlinable public mutating func removeAll() {
        guard count > 0 else { return }
        for index in keys.indices { keys[index] = 0 }
        for index in slots.indices { slots[index] = nil }
        occupied = 0
    }

    /// The ids present, in no particular order.
    @inlinable public var ids: [UInt32] { keys.filter { $0 != 0 } }

    /// The values present, in no particular order (a view: iterating allocates nothing).
    @inlinable public var values: some Sequence<Value> { slots.lazy.compactMap { $0 } }
}
