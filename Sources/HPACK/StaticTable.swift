// RFC 7541 Appendix A: the static table, indices 1...61.

enum StaticTable {
    static let count = 61

    /// Entry i is at index i + 1.
    static let entries: [HeaderField] = [
        (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
        (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
        (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
        ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
        ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
        ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
        ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
        ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
        ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
        ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
        ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
        ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
    ].map { HeaderField(name: $0.0, value: $0.1) }

    /// `entries` with their octet sizes, for the decoder.
    static let tableEntries: [TableEntry] = entries.map {
        TableEntry(field: $0, nameOctets: $0.name.utf8.count, size: $0.name.utf8.count + $0.value.utf8.count + entryOverhead)
    }

    /// The index of a full name/value match, scanning the entries that share the name found at `nameIndex`.
    static func index(of field: HeaderField, from nameIndex: Int) -> Int? {
        var index = nameIndex
        while index <= count && entries[index - 1].name == field.name {
            if entries[index - 1].value == field.value { return index }
            index += 1
        }
        return nil
    }

    /// Name match -> lowest index.
    static let nameIndex: [String: Int] = {
        var map: [String: Int] = [:]
        for (offset, field) in entries.enumerated() where map[field.name] == nil { map[field.name] = offset + 1 }
        return map
    }()
}
