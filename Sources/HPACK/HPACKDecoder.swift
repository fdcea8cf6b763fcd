// RFC 7541 section 6: decoding header blocks.

/// Decodes the header blocks of one HTTP/2 connection direction; its dynamic table persists across blocks.
public struct HPACKDecoder: Sendable {
    private var table: DynamicTable
    /// The SETTINGS_HEADER_TABLE_SIZE we advertised (and the peer acknowledged).
    private var tableSizeLimit: Int
    /// Set when the limit drops below the table's current maximum: the next block must start with a size update.
    private var sizeUpdateRequired = false
    public let maxHeaderListSize: Int

    /// `maxTableSize` is the table size at the start of the connection, which is also the first limit. For HTTP/2
    /// keep the protocol's 4096 here even when advertising less, and call `setMaxTableSizeLimit` once the peer has
    /// acknowledged our SETTINGS (until then the peer may still use 4096).
    /// With a `classifier`, every decoded field carries its `classification`.
    public init(maxTableSize: Int = 4096, maxHeaderListSize: Int = 16384, classifier: HeaderFieldClassifier? = nil) {
        let size = max(0, maxTableSize)
        table = DynamicTable(maxSize: size)
        tableSizeLimit = size
        self.maxHeaderListSize = max(0, maxHeaderListSize)
        self.classifier = classifier
        staticEntries = classifier.map { classify in
            StaticTable.tableEntries.map { entry in
                var entry = entry
                entry.field.classification = classify(entry.field)
                return entry
            }
        } ?? StaticTable.tableEntries
    }

    private let classifier: HeaderFieldClassifier?
    /// The static table, classified by `classifier`.
    private let staticEntries: [TableEntry]

    /// Our advertised SETTINGS_HEADER_TABLE_SIZE: a size update above it is an error.
    /// Call it when the peer acknowledges the SETTINGS frame carrying the new value (RFC 9113 section 6.5.3):
    /// if it is below the table's current maximum, the peer's next block must begin with a size update.
    public mutating func setMaxTableSizeLimit(_ limit: Int) {
        tableSizeLimit = max(0, limit)
        if table.maxSize > tableSizeLimit { sizeUpdateRequired = true }
    }

    /// Current dynamic table maximum, as last set by the peer's size updates.
    public var dynamicTableMaxSize: Int { table.maxSize }
    /// Sum of the dynamic table's entry sizes (name + value + 32 each).
    public var dynamicTableSize: Int { table.size }
    /// The dynamic table's entries, newest (index 62) first.
    public var dynamicTableEntries: [HeaderField] { table.fields }

    /// Decodes one complete header block (after HEADERS+CONTINUATION reassembly).
    /// Throws on any malformation and when the decoded list (RFC 9113 size: name+value+32 each) exceeds maxHeaderListSize.
    public mutating func decode(_ block: ArraySlice<UInt8>) throws(HPACKError) -> [HeaderField] {
        try block.withUnsafeBufferPointer { (bytes) throws(HPACKError) -> [HeaderField] in
            try decode(bytes)
        }
    }

    private mutating func decode(_ bytes: UnsafeBufferPointer<UInt8>) throws(HPACKError) -> [HeaderField] {
        var reader = BlockReader(bytes)
        var fields: [HeaderField] = []
        // Each field takes at least one octet; reserving avoids regrowth for typical (<= 16 field) requests.
        fields.reserveCapacity(min(bytes.count, 16))
        var listSize = 0
        var tooLarge = false
        var atStart = true

        while !reader.isAtEnd {
            let first = reader.current
            if first & 0xE0 == 0x20 {
                // Dynamic table size update (section 6.3): only before the first field.
                guard atStart else { throw .sizeUpdateNotAtStart }
                let newSize = try reader.readInteger(prefixBits: 5)
                guard newSize <= tableSizeLimit else {
                    throw .sizeUpdateAboveLimit(requested: newSize, limit: tableSizeLimit)
                }
                table.setMaxSize(newSize)
                sizeUpdateRequired = false
                continue
            }
            if atStart {
                guard !sizeUpdateRequired else { throw .missingSizeUpdate }
                atStart = false
            }

            let field: HeaderField
            let size: Int
            if first & 0x80 != 0 {
                // Indexed header field (section 6.1).
                let entry = try lookup(try reader.readInteger(prefixBits: 7))
                (field, size) = (entry.field, entry.size)
            } else {
                // Literal: with incremental indexing 01xxxxxx (6-bit index), otherwise 0000xxxx / 0001xxxx.
                let indexing = first & 0x40 != 0
                let nameIndex = try reader.readInteger(prefixBits: indexing ? 6 : 4)
                let name: String
                let nameOctets: Int
                if nameIndex == 0 {
                    (name, nameOctets) = try reader.readString()
                } else {
                    let entry = try lookup(nameIndex)
                    (name, nameOctets) = (entry.field.name, entry.nameOctets)
                }
                let (value, valueOctets) = try reader.readString()
                var literal = HeaderField(name: name, value: value)
                if let classifier { literal.classification = classifier(literal) }
                field = literal
                size = nameOctets + valueOctets + entryOverhead
                if indexing {
                    table.insert(TableEntry(field: field, nameOctets: nameOctets, size: size))
                }
            }

            // Past the limit, keep decoding (the dynamic table must stay in sync) but keep nothing.
            if !tooLarge {
                listSize += size
                if listSize > maxHeaderListSize {
                    tooLarge = true
                    fields = []
                } else {
                    fields.append(field)
                }
            }
        }
        // An empty block is still "the first header block following the change" (RFC 7541 section 4.2).
        if sizeUpdateRequired { throw .missingSizeUpdate }
        if tooLarge { throw .headerListTooLarge(limit: maxHeaderListSize) }
        return fields
    }

    /// An entry by absolute index (static 1...61, then dynamic newest first).
    private func lookup(_ index: Int) throws(HPACKError) -> TableEntry {
        if index >= 1 && index <= StaticTable.count { return staticEntries[index - 1] }
        guard index > StaticTable.count, let entry = table.entry(at: index - StaticTable.count - 1) else {
            throw .invalidIndex(index)
        }
        return entry
    }
}
