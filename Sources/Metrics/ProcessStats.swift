// Process figures read from /proc at scrape time (Linux).
import Glibc

enum ProcessStats {
    /// Resident set size in bytes: the second field of /proc/self/statm (pages) times the page size.
    static func residentMemoryBytes() -> Int? {
        guard let text = readSmallFile("/proc/self/statm") else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let pages = Int(fields[1]) else { return nil }
        let pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pageSize > 0 else { return nil }
        let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? nil : bytes
    }

    /// Open file descriptors: entries of /proc/self/fd, minus the one the directory listing itself holds.
    static func openFileDescriptors() -> Int? {
        guard let dir = opendir("/proc/self/fd") else { return nil }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let isDot = withUnsafeBytes(of: entry.pointee.d_name) { name in
                name[0] == UInt8(ascii: ".")
            }
            if !isDot { count += 1 }
        }
        return max(0, count - 1)
    }

    /// The soft RLIMIT_NOFILE: open() fails with EMFILE beyond it. (RLIM_INFINITY is all ones: rlim_t.max.)
    static func maxFileDescriptors() -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(exactly: limit.rlim_cur)
    }

    /// memory.max of this process's cgroup (v2): the container's or the systemd unit's memory limit. nil when
    /// unlimited ("max") or not on cgroup v2. `root` is for tests.
    static func memoryLimitBytes(root: String = "") -> Int? {
        guard let membership = readSmallFile(root + "/proc/self/cgroup") else { return nil }
        // cgroup v2 has one line, "0::/path"; v1 hierarchies have other numbers and are not read.
        guard let line = membership.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        var path = String(line.dropFirst(3))
        if path == "/" { path = "" }
        guard let text = readSmallFile(root + "/sys/fs/cgroup" + path + "/memory.max") else { return nil }
        return text.split(whereSeparator: { $0 == "\n" || $0 == " " }).first.flatMap { Int($0) }
    }

    /// Process start as Unix time: field 22 of /proc/self/stat (clock ticks after boot) plus `btime` of /proc/stat.
    static func startTimeSeconds() -> Double? {
        guard let stat = readSmallFile("/proc/self/stat"),
              let closingParen = stat.lastIndex(of: ")") else { return nil }
        // The command name (field 2) may contain spaces; fields after it start with field 3 (state).
        let rest = stat[stat.index(after: closingParen)...].split(separator: " ")
        guard rest.count > 19, let ticks = Double(rest[19]) else { return nil }
        guard let procStat = readSmallFile("/proc/stat", limit: 1 << 16) else { return nil }
        var bootTime: Double?
        for line in procStat.split(separator: "\n") where line.hasPrefix("btime ") {
            bootTime = Double(line.dropFirst("btime ".count))
        }
        let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard let boot = bootTime, ticksPerSecond > 0 else { return nil }
        return boot + ticks / ticksPerSecond
    }

    /// Reads a /proc file (whose size stat reports as 0) up to `limit` bytes.
    static func readSmallFile(_ path: String, limit: Int = 4096) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: limit)
        var filled = 0
        while filled < limit {
            let n = bytes.withUnsafeMutableBytes { buffer in
                read(fd, buffer.baseAddress! + filled, limit - filled)
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            filled += n
        }
        return String(decoding: bytes[..<filled], as: UTF8.self)
    }
}
