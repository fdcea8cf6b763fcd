// Keeps key material out of core dumps and away from same-uid debuggers (security review item 13).
import CProcessHardening
import Glibc

enum ProcessHardening {
    /// RLIMIT_CORE 0 (no core file even if something re-enables dumping) and PR_SET_DUMPABLE 0 (no core, no
    /// ptrace attach by other processes of kekd's uid, /proc/PID/mem root-only). Returns a reason on failure.
    static func disableCoreDumps() -> String? {
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        guard setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &none) == 0 else {
            return "setrlimit(RLIMIT_CORE, 0): \(String(cString: strerror(errno)))"
        }
        guard kekd_set_not_dumpable() == 0 else {
            return "prctl(PR_SET_DUMPABLE, 0): \(String(cString: strerror(errno)))"
        }
        return nil
    }
}

enum StartupMemory {
    /// Start-up runs code that never runs again (flag parsing, key and configuration loading, OpenSSL's
    /// initialisation), and the kernel maps code in blocks around each fault: left alone, about 7 of the 10 MB of
    /// kekd's code stays resident for the life of the process. Dropping the code mappings once start-up is done
    /// leaves what serving touches (about 1.5 MiB). Returns a reason on failure.
    static func releaseCodePages() -> String? {
        kekd_release_code_pages() < 0 ? "madvise(MADV_DONTNEED) of the code pages: \(String(cString: strerror(errno)))" : nil
    }
}
