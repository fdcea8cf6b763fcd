// The three standard streams as plain file descriptors: Foundation's FileHandle is the only thing some modules
// imported Foundation for.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes all of `bytes` to `fd`, retrying short writes and EINTR; false on any other error.
@discardableResult
public func writeFully(_ fd: Int32, _ bytes: some Collection<UInt8>) -> Bool {
    let array = Array(bytes)
    var offset = 0
    while offset < array.count {
        let n = array.withUnsafeBytes { write(fd, $0.baseAddress! + offset, array.count - offset) }
        if n < 0 { if errno == EINTR { continue }; return false }
        offset += n
    }
    return true
}

public func writeStandardError(_ text: String) { writeFully(2, Array(text.utf8)) }
public func writeStandardOutput(_ text: String) { writeFully(1, Array(text.utf8)) }
public func writeStandardOutput(_ bytes: [UInt8]) { writeFully(1, bytes) }

/// Everything on standard input up to end of file (kekctl encrypt/decrypt read their payload this way).
public func readStandardInput() -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress!, $0.count) }
        if n < 0 { if errno == EINTR { continue }; break }
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}
