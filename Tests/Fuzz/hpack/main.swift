// libFuzzer harness for the HPACK decoder. Not a SwiftPM target. Built by `scripts/fuzz hpack SECONDS` (HPACK as its
// own module), or compiled together with the HPACK sources in one module:
//   swiftc -O -sanitize=fuzzer,address -parse-as-library -use-ld=lld Sources/HPACK/*.swift \
//       Tests/Fuzz/hpack/main.swift -o .build-fuzz/hpack
// It uses only HPACK's public API, so both builds work.
// Input layout: one configuration octet, then header blocks separated by the 3-octet marker FE FD FC.
// All blocks go through one decoder, so the dynamic table carries over as on a connection.
//
// Configuration octet:
//   bits 0-1: table size (4096, 256, 64, 0) for decoder and limit
//   bit 2:    maxHeaderListSize 512 instead of 16384
//   bit 3:    before each later block, lower our advertised limit to 128 (a size update becomes required)
//   bit 4:    before each later block, raise the limit to 8192
//
// Beyond "never crash", each decoded list is checked: re-encoded by HPACKEncoder and decoded by a fresh decoder, it
// must come back unchanged; the table never exceeds its maximum; the list never exceeds maxHeaderListSize.

#if canImport(HPACK)
import HPACK
#endif

let marker: [UInt8] = [0xFE, 0xFD, 0xFC]

func splitBlocks(_ input: UnsafeBufferPointer<UInt8>) -> [ArraySlice<UInt8>] {
    Array(input).split(separator: marker, omittingEmptySubsequences: false)
}

func check(_ condition: Bool, _ message: String) {
    if !condition { fatalError("HPACK fuzz invariant: \(message)") }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHPACK(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let config = data[0]
    let tableSize = [4096, 256, 64, 0][Int(config & 0x03)]
    let listLimit = config & 0x04 != 0 ? 512 : 16384
    var decoder = HPACKDecoder(maxTableSize: tableSize, maxHeaderListSize: listLimit)

    for (number, block) in splitBlocks(UnsafeBufferPointer(start: data + 1, count: size - 1)).enumerated() {
        if number > 0 && config & 0x08 != 0 { decoder.setMaxTableSizeLimit(128) }
        if number > 0 && config & 0x10 != 0 { decoder.setMaxTableSizeLimit(8192) }
        let list: [HeaderField]
        do {
            list = try decoder.decode(block)
        } catch {
            // headerListTooLarge keeps the table in sync, so decoding may continue; any other error ends the
            // connection.
            if case .headerListTooLarge = error { continue }
            return 0
        }
        check(decoder.dynamicTableSize <= decoder.dynamicTableMaxSize, "table over its maximum")
        let listSize = list.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 32 }
        check(list.count * 32 <= listLimit, "list over maxHeaderListSize")

        // Round trip through our encoder (Huffman and indexing on) and a fresh decoder.
        var encoder = HPACKEncoder()
        var encoded: [UInt8] = []
        encoder.encode(list, into: &encoded)
        var fresh = HPACKDecoder(maxHeaderListSize: listSize + 1)
        let again = try? fresh.decode(encoded[...])
        check(again == list, "re-encoded list differs")
    }
    return 0
}
