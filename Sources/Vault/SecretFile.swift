// Secrets come only from files, and files change (rotated secret-ids, renewed certificates): re-read on change.
import Foundation
import Locking

/// Identity of a file's current contents, cheap to compare (no read).
struct FileStamp: Equatable, Sendable {
    var modified: Double
    var size: Int64
    var inode: UInt64

    static func of(_ path: String) -> FileStamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let mtime = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
        return FileStamp(modified: mtime, size: Int64(st.st_size), inode: UInt64(st.st_ino))
    }
}

/// A small secret (token, role-id, secret-id) read from a file, re-read when the file changes.
final class SecretFile: Sendable {
    let path: String
    private let cache = LockedValue<(stamp: FileStamp, value: [UInt8])?>(nil)
    static let maxSize = 64 * 1024

    init(path: String) { self.path = path }

    /// The trimmed contents. Throws a message that names the file but never its contents.
    func read() throws(VaultError) -> [UInt8] {
        guard let stamp = FileStamp.of(path) else { throw VaultError(.unavailable, "cannot read secret file \(path)") }
        if let cached = cache.withLock({ $0 }), cached.stamp == stamp { return cached.value }
        guard stamp.size <= Int64(Self.maxSize), let data = FileManager.default.contents(atPath: path) else {
            throw VaultError(.unavailable, "cannot read secret file \(path)")
        }
        var bytes = [UInt8](data)
        while let last = bytes.last, last == 10 || last == 13 || last == 32 || last == 9 { bytes.removeLast() }
        while let first = bytes.first, first == 10 || first == 13 || first == 32 || first == 9 { bytes.removeFirst() }
        guard !bytes.isEmpty else { throw VaultError(.unavailable, "secret file \(path) is empty") }
        let value = bytes
        cache.withLock { $0 = (stamp, value) }
        return value
    }

    /// True if the file differs from what was last read.
    func changed() -> Bool {
        let stamp = FileStamp.of(path)
        return cache.withLock { $0?.stamp } != stamp
    }
}
