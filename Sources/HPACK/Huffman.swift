// RFC 7541 Appendix B: the Huffman code. Encoding packs codes into a 64-bit accumulator; decoding runs a
// table-driven state machine that consumes 4 bits per step (one table lookup per nibble, no per-bit walk).

enum Huffman {
    /// (code, bit length) for symbols 0...255 and EOS (256), from RFC 7541 Appendix B.
    static let codeTable: [(code: UInt32, length: UInt8)] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
    ]

    static let eos = 256

    private static let codes: [UInt32] = codeTable.map { $0.code }
    private static let lengths: [UInt8] = codeTable.map { $0.length }

    // MARK: Encoding

    /// Length in octets of the Huffman form of `bytes` (padding included).
    static func encodedLength(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        lengths.withUnsafeBufferPointer { lengths in
            var bits = 0
            for byte in bytes { bits &+= Int(lengths[Int(byte)]) }
            return (bits + 7) >> 3
        }
    }

    /// Appends the Huffman form of `bytes`, padded with the EOS prefix (all 1s).
    static func encode(_ bytes: UnsafeBufferPointer<UInt8>, into buffer: inout [UInt8]) {
        codes.withUnsafeBufferPointer { codes in
            lengths.withUnsafeBufferPointer { lengths in
                var accumulator: UInt64 = 0
                var pending = 0  // bits in the accumulator, < 8 between symbols
                for byte in bytes {
                    let length = Int(lengths[Int(byte)])
                    accumulator = (accumulator << UInt64(length)) | UInt64(codes[Int(byte)])
                    pending += length
                    while pending >= 8 {
                        pending -= 8
                        buffer.append(UInt8(truncatingIfNeeded: accumulator >> UInt64(pending)))
                    }
                }
                if pending > 0 {
                    let padding = 8 - pending
                    accumulator = (accumulator << UInt64(padding)) | ((1 << UInt64(padding)) - 1)
                    buffer.append(UInt8(truncatingIfNeeded: accumulator))
                }
            }
        }
    }

    // MARK: Decoding

    // A decoder state is an internal node of the code tree (256 of them; 0 is the root). The transition table has
    // 16 entries per state, one per input nibble, each packing: next state (bits 0-7), the emitted symbol
    // (bits 8-15), and flags. A nibble emits at most one symbol because no code is shorter than 5 bits.
    private static let emitFlag: UInt32 = 1 << 16
    private static let failFlag: UInt32 = 1 << 17     // the nibble completes EOS
    private static let acceptFlag: UInt32 = 1 << 18   // the next state is a valid place to end: <= 7 bits, all 1s

    private static let transitions: [UInt32] = buildTransitions()

    private static func buildTransitions() -> [UInt32] {
        // children[node][bit]: >= 0 is an internal node, < 0 is a leaf -(symbol + 1).
        var children: [[Int]] = [[0, 0]]
        var acceptable: [Bool] = [true]  // path from the root is all 1s and at most 7 bits long
        var depth: [Int] = [0]
        for symbol in 0...eos {
            let (code, length) = codeTable[symbol]
            var node = 0
            for position in stride(from: Int(length) - 1, through: 0, by: -1) {
                let bit = Int((code >> UInt32(position)) & 1)
                if position == 0 {
                    children[node][bit] = -(symbol + 1)
                } else {
                    if children[node][bit] <= 0 {
                        children.append([0, 0])
                        depth.append(depth[node] + 1)
                        acceptable.append(acceptable[node] && bit == 1 && depth[node] + 1 <= 7)
                        children[node][bit] = children.count - 1
                    }
                    node = children[node][bit]
                }
            }
        }
        // children[root] is never 0 for a complete code, so "0 = unset" above is unambiguous.
        var table = [UInt32](repeating: 0, count: children.count * 16)
        for state in 0..<children.count {
            for nibble in 0..<16 {
                var node = state
                var entry: UInt32 = 0
                for position in stride(from: 3, through: 0, by: -1) {
                    let child = children[node][(nibble >> position) & 1]
                    if child < 0 {
                        let symbol = -child - 1
                        if symbol == eos {
                            entry |= failFlag
                            break
                        }
                        entry |= emitFlag | (UInt32(symbol) << 8)
                        node = 0
                    } else {
                        node = child
                    }
                }
                entry |= UInt32(node)
                if acceptable[node] { entry |= acceptFlag }
                table[state * 16 + nibble] = entry
            }
        }
        return table
    }

    /// Applies one transition's output; false when it completed EOS.
    @inline(__always)
    private static func emit(_ entry: UInt32, into output: UnsafeMutableBufferPointer<UInt8>, at written: inout Int)
        -> Bool {
        guard entry & (failFlag | emitFlag) != 0 else { return true }
        // The capacity bound (8/5 of the input) makes the second test unreachable; it is kept as a guard.
        guard entry & failFlag == 0, written < output.count else { return false }
        output[written] = UInt8(truncatingIfNeeded: entry >> 8)
        written += 1
        return true
    }

    /// Decodes a Huffman-coded string literal. Returns the string and its decoded length in octets.
    static func decode(_ input: UnsafeBufferPointer<UInt8>) throws(HPACKError) -> (String, Int) {
        if input.isEmpty { return ("", 0) }
        // Every code is at least 5 bits, so the output is at most 8/5 of the input.
        let capacity = input.count * 8 / 5 + 1
        var failure: HPACKError?
        var octets = 0
        let string = transitions.withUnsafeBufferPointer { table in
            String(unsafeUninitializedCapacity: capacity) { output in
                var state = 0
                var written = 0
                var accepting = true
                for byte in input {
                    // High nibble, then low nibble; the state after the low nibble decides acceptance.
                    let high = table[(state << 4) | Int(byte >> 4)]
                    guard emit(high, into: output, at: &written) else {
                        failure = .huffmanEOS
                        return 0
                    }
                    let low = table[Int((high & 0xFF) << 4) | Int(byte & 0x0F)]
                    guard emit(low, into: output, at: &written) else {
                        failure = .huffmanEOS
                        return 0
                    }
                    state = Int(low & 0xFF)
                    accepting = low & acceptFlag != 0
                }
                if !accepting {
                    failure = .invalidHuffmanPadding
                    return 0
                }
                octets = written
                return written
            }
        }
        if let failure { throw failure }
        return (string, octets)
    }
}
