// RFC 7541 section 6: encoding header blocks.
import Synchronization

/// Encodes the header blocks of one HTTP/2 connection direction; its dynamic table persists across blocks.
/// Fields found in a table are sent as 1-octet indexed references; with `useIndexing`, every other field that fits
/// is sent as a literal with incremental indexing so it can be referenced next time.
public struct HPACKEncoder: Sendable {
    private var table: DynamicTable
    /// The largest table we are willing to keep, whatever the peer allows.
    private let tableSizeCeiling: Int
    private let useHuffman: Bool
    private let useIndexing: Bool

    // Every inserted entry gets a sequence number; the newest has insertCount - 1 and absolute index 62.
    private var insertCount = 0
    /// Newest live sequence number per field and per name, for lookups in O(1).
    private var fieldSequence: [HeaderField: Int] = [:]
    private var nameSequence: [String: Int] = [:]
    /// Size updates owed at the start of the next block: the smallest size since the last block, then the final one.
    private var pendingSizeUpdate: (smallest: Int, final: Int)?
    /// The last block's fields and the table entry each can be referenced by. A client sends the same header list
    /// call after call, so the field at a position usually repeats; an equal field (strings of the same storage compare
    /// at once) whose entry is still in its table is sent as that index without hashing anything.
    private var lastBlock: [(field: HeaderField, reference: Reference)] = []
    /// Each pre-encoded list sent with this table (a server has a handful: its response headers, its OK trailers):
    /// the entry each field can be referenced by, and those references as index octets, valid while the table is
    /// at `generation`.
    private var preEncodedMemos: [PreEncodedMemo] = []
    /// Changes whenever an entry is inserted or evicted or the size changes: dynamic indices may have moved.
    private var tableGeneration = 0

    private struct PreEncodedMemo {
        var id: Int
        var references: [Reference]
        var indices: [UInt8]
        var generation: Int
    }

    private enum Reference {
        case staticIndex(Int)
        /// The sequence number of a dynamic table entry.
        case dynamic(Int)
        /// Sent as a literal not added to a table.
        case none
    }

    /// `maxTableSize` is the table size both sides start with (HTTP/2: 4096) and the most this encoder will use.
    public init(maxTableSize: Int = 4096, useHuffman: Bool = true, useIndexing: Bool = true) {
        let size = max(0, maxTableSize)
        table = DynamicTable(maxSize: size)
        tableSizeCeiling = size
        self.useHuffman = useHuffman
        self.useIndexing = useIndexing
    }

    /// Current dynamic table maximum.
    public var dynamicTableMaxSize: Int { table.maxSize }
    /// Sum of the dynamic table's entry sizes (name + value + 32 each).
    public var dynamicTableSize: Int { table.size }
    /// The dynamic table's entries, newest (index 62) first.
    public var dynamicTableEntries: [HeaderField] { table.fields }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE; the next block starts with a size update when it shrinks/changes.
    /// The table never grows past the `maxTableSize` given at init.
    public mutating func setMaxTableSize(_ size: Int) {
        let newSize = min(max(0, size), tableSizeCeiling)
        guard newSize != table.maxSize else { return }
        evict(toFit: 0, within: newSize)
        table.setMaxSize(newSize)
        tableGeneration += 1
        pendingSizeUpdate = (min(pendingSizeUpdate?.smallest ?? newSize, newSize), newSize)
    }

    public mutating func encode(_ headers: [HeaderField], into buffer: inout [UInt8]) {
        appendPendingSizeUpdate(to: &buffer)
        var block = lastBlock
        lastBlock = []  // not shared while `block` is rebuilt in place
        for (position, field) in headers.enumerated() {
            if position < block.count, block[position].field == field, let index = index(of: block[position].reference) {
                appendInteger(index, prefixBits: 7, flags: 0x80, to: &buffer)
                continue
            }
            let reference = encode(field, into: &buffer)
            if position < block.count { block[position] = (field, reference) } else { block.append((field, reference)) }
        }
        if block.count > headers.count { block.removeLast(block.count - headers.count) }
        lastBlock = block
    }

    /// The index a remembered reference has now; nil when it is a literal or its entry was evicted.
    private func index(of reference: Reference) -> Int? {
        switch reference {
        case .staticIndex(let index): index
        case .dynamic(let sequence): dynamicIndex(sequence)
        case .none: nil
        }
    }

    /// A table size update is owed at the start of the next block: a block encoded once cannot be sent as it is.
    public var owesSizeUpdate: Bool { pendingSizeUpdate != nil }

    /// A fixed header list (`PreEncodedHeaders`). Its first use on this encoder adds its fields to the dynamic
    /// table like any block; afterwards, while those entries live, it is only their indices (and the peer decodes
    /// indices, not literals). Without a table it is the block encoded once.
    public mutating func encode(_ headers: PreEncodedHeaders, into buffer: inout [UInt8]) {
        appendPendingSizeUpdate(to: &buffer)
        guard useIndexing, table.maxSize > 0 else {
            buffer.append(contentsOf: headers.block)
            return
        }
        if let block = readyBlock(for: headers) {  // the size update, if one was owed, is written above
            buffer.append(contentsOf: block)
            return
        }
        // The table changed since: the same entries may still be live at new indices.
        let slot = memoSlot(headers.id)
        if let slot, let indices = indices(of: preEncodedMemos[slot].references) {
            preEncodedMemos[slot].indices = indices
            preEncodedMemos[slot].generation = tableGeneration
            buffer.append(contentsOf: indices)
            return
        }
        // First use, or an entry has been evicted since: encode as usual, which (re)inserts what is missing.
        var references: [Reference] = []
        references.reserveCapacity(headers.fields.count)
        for field in headers.fields { references.append(encode(field, into: &buffer)) }
        let indices = indices(of: references)
        let memo = PreEncodedMemo(id: headers.id, references: references, indices: indices ?? [],
                                  generation: indices == nil ? -1 : tableGeneration)
        if let slot {
            preEncodedMemos[slot] = memo
        } else {
            if preEncodedMemos.count == 8 { preEncodedMemos.removeFirst() }
            preEncodedMemos.append(memo)
        }
    }

    /// The block `encode(headers, into:)` would append, when it is ready-made: no size update owed and the list's
    /// entries unchanged since its indices were computed. Lets a server send its usual answer without encoding.
    /// (`mutating` only so a caller holding the encoder in a class property accesses it in place, without a copy.)
    public mutating func readyBlock(for headers: PreEncodedHeaders) -> [UInt8]? {
        guard pendingSizeUpdate == nil, let slot = memoSlot(headers.id),
              preEncodedMemos[slot].generation == tableGeneration else { return nil }
        return preEncodedMemos[slot].indices
    }

    private func memoSlot(_ id: Int) -> Int? {
        var slot = 0
        while slot < preEncodedMemos.count {
            if preEncodedMemos[slot].id == id { return slot }
            slot += 1
        }
        return nil
    }

    /// The references as index octets when every one is still live.
    private func indices(of references: [Reference]) -> [UInt8]? {
        var octets: [UInt8] = []
        for reference in references {
            guard let index = index(of: reference) else { return nil }
            appendInteger(index, prefixBits: 7, flags: 0x80, to: &octets)
        }
        return octets
    }

    private mutating func appendPendingSizeUpdate(to buffer: inout [UInt8]) {
        if let update = pendingSizeUpdate {
            if update.smallest < update.final {
                appendInteger(update.smallest, prefixBits: 5, flags: 0x20, to: &buffer)
            }
            appendInteger(update.final, prefixBits: 5, flags: 0x20, to: &buffer)
            pendingSizeUpdate = nil
        }
    }

    /// Encodes one field; returns how the same field can be referenced in the next block.
    private mutating func encode(_ field: HeaderField, into buffer: inout [UInt8]) -> Reference {
        // One hash of the name finds static matches; the dynamic table is searched only when it holds anything.
        let staticName = StaticTable.nameIndex[field.name]
        if let index = staticName.flatMap({ StaticTable.index(of: field, from: $0) }) {
            appendInteger(index, prefixBits: 7, flags: 0x80, to: &buffer)
            return .staticIndex(index)
        }
        if table.count > 0, let sequence = fieldSequence[field], let index = dynamicIndex(sequence) {
            appendInteger(index, prefixBits: 7, flags: 0x80, to: &buffer)
            return .dynamic(sequence)
        }
        let nameIndex = staticName ?? (table.count > 0 ? dynamicIndex(nameSequence[field.name]) : nil) ?? 0
        let size = field.name.utf8.count + field.value.utf8.count + entryOverhead
        var reference = Reference.none
        if useIndexing && size <= table.maxSize {
            appendInteger(nameIndex, prefixBits: 6, flags: 0x40, to: &buffer)
            reference = .dynamic(insertCount)
            insert(field, size: size)
        } else {
            appendInteger(nameIndex, prefixBits: 4, flags: 0x00, to: &buffer)
        }
        if nameIndex == 0 { appendString(field.name, to: &buffer) }
        appendString(field.value, to: &buffer)
        return reference
    }

    /// The absolute index of a live sequence number.
    private func dynamicIndex(_ sequence: Int?) -> Int? {
        guard let sequence, sequence >= insertCount - table.count else { return nil }
        return StaticTable.count + insertCount - sequence
    }

    private mutating func insert(_ field: HeaderField, size: Int) {
        evict(toFit: size, within: table.maxSize)
        table.appendAssumingRoom(TableEntry(field: field, nameOctets: field.name.utf8.count, size: size))
        fieldSequence[field] = insertCount
        nameSequence[field.name] = insertCount
        insertCount += 1
        tableGeneration += 1
    }

    /// Evicts oldest entries until `incoming` more octets fit in `maxSize`, dropping their lookup entries.
    private mutating func evict(toFit incoming: Int, within maxSize: Int) {
        while table.count > 0 && table.size + incoming > maxSize {
            let sequence = insertCount - table.count
            guard let evicted = table.removeOldest() else { return }
            if fieldSequence[evicted.field] == sequence { fieldSequence[evicted.field] = nil }
            if nameSequence[evicted.field.name] == sequence { nameSequence[evicted.field.name] = nil }
        }
    }

    private func appendString(_ string: String, to buffer: inout [UInt8]) {
        var string = string
        string.withUTF8 { bytes in
            if useHuffman {
                let huffmanLength = Huffman.encodedLength(bytes)
                if huffmanLength < bytes.count {
                    appendInteger(huffmanLength, prefixBits: 7, flags: 0x80, to: &buffer)
                    Huffman.encode(bytes, into: &buffer)
                    return
                }
            }
            appendInteger(bytes.count, prefixBits: 7, flags: 0x00, to: &buffer)
            buffer.append(contentsOf: bytes)
        }
    }
}

/// A header list a server sends on every call (its response headers, its OK trailers), prepared once. An encoder
/// with a dynamic table sends it as table indices after its first use on the connection (see `encode(_:into:)`);
/// `block`, static-table references and literals without indexing, is the form for an encoder without one.
public struct PreEncodedHeaders: Sendable {
    public let fields: [HeaderField]
    public let block: [UInt8]
    /// Distinguishes this list in an encoder's memo of where its fields are.
    let id: Int

    private static let nextID = Atomic<Int>(0)

    public init(_ fields: [HeaderField]) {
        self.fields = fields
        var encoder = HPACKEncoder(maxTableSize: 0, useHuffman: true, useIndexing: false)
        var block: [UInt8] = []
        encoder.encode(fields, into: &block)
        self.block = block
        id = Self.nextID.add(1, ordering: .relaxed).newValue
    }
}
