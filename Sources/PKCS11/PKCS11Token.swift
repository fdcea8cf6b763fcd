// One token through one module: C_Initialize, the slot (by token label or number), one login shared by a small
// pool of sessions, and a full reconnect (C_Finalize, C_Initialize, log in again) when the token came back or the
// PIN file changed. Holds no key policy.
import CPKCS11
import Crypto
import Glibc
import KMS
import Locking


public final class PKCS11Token: Sendable {
    public let configuration: PKCS11Configuration
    public let module: PKCS11Module
    private let onCall: BackendCallHook?

    private struct State {
        var slot: UInt?
        var info: TokenInfo?
        var idle: [UInt] = []
        /// Bumped by every (re)connect: sessions of an older generation are dropped, never reused.
        var generation = 0
        var pinStamp: FileStamp?
        /// The PIN file the token refused, and why: not tried again until the file changes, so retries never lock
        /// the token's PIN (many HSMs lock it after a few failures).
        var refusedPIN: (stamp: FileStamp?, error: PKCS11Error)?
    }
    private let state = LockedValue(State())
    /// Serialises connect/disconnect (C_Finalize must not race C_Initialize).
    private let connectLock = Lock()
    static let maxIdleSessions = 4

    /// Loads the module (no C_Initialize yet).
    public init(configuration: PKCS11Configuration, onCall: BackendCallHook? = nil) throws(PKCS11Error) {
        self.configuration = configuration
        self.onCall = onCall
        module = try PKCS11Module(path: configuration.modulePath)
    }

    /// The token's label, serial and model from the last connect.
    public var info: TokenInfo? { state.withLock { $0.info } }

    /// (Re)initializes the module, finds the token, reads the PIN file and logs in.
    @discardableResult
    public func connect() throws(PKCS11Error) -> TokenInfo {
        try connectLock.withLock { () throws(PKCS11Error) -> TokenInfo in
            if let refused = state.withLock({ $0.refusedPIN }), refused.stamp == FileStamp(path: configuration.pinFile) {
                throw PKCS11Error(rv: refused.error.rv, refused.error.message + " (not retried until --pkcs11-pin-file changes)")
            }
            return try timed(.connect) { () throws(PKCS11Error) -> TokenInfo in
                dropSessionsAndFinalize()
                try module.initialize()
                let (slot, info) = try findToken()
                let (pin, stamp) = try Self.readPIN(configuration.pinFile)
                var secret = pin
                defer { wipe(&secret) }
                let session = try module.openSession(slot: slot)
                do throws(PKCS11Error) { try module.login(session, pin: secret) } catch {
                    module.closeSession(session)
                    let failure = PKCS11Error(rv: error.rv, "log in to token \(info.label): \(error.message)")
                    if error.pinRefused { state.withLock { $0.refusedPIN = (stamp, failure) } }
                    throw failure
                }
                state.withLock { s in
                    s.slot = slot; s.info = info; s.pinStamp = stamp; s.refusedPIN = nil
                    s.generation &+= 1
                    s.idle = [session]
                }
                return info
            }
        }
    }

    /// Closes the sessions and finalizes the module (at exit, or before a reconnect).
    public func disconnect() {
        connectLock.withLock { dropSessionsAndFinalize() }
    }

    private func dropSessionsAndFinalize() {
        let sessions = state.withLock { s -> [UInt] in
            defer { s.idle = []; s.slot = nil; s.generation &+= 1 }
            return s.slot == nil ? [] : s.idle
        }
        for session in sessions { module.closeSession(session) }
        module.finalize()
    }

    private func findToken() throws(PKCS11Error) -> (UInt, TokenInfo) {
        let slots = try module.slots()
        switch configuration.token {
        case .slot(let wanted):
            guard slots.contains(wanted) else { throw PKCS11Error(rv: nil, "no token in slot \(wanted) of \(configuration.modulePath)") }
            return (wanted, try module.tokenInfo(slot: wanted))
        case .label(let wanted):
            for slot in slots {
                let info = try module.tokenInfo(slot: slot)
                if info.label == wanted { return (slot, info) }
            }
            throw PKCS11Error(rv: nil, "no token labelled \(wanted) in \(configuration.modulePath) (\(slots.count) tokens present)")
        }
    }

    /// Whether the PIN file differs from the one last logged in with (size, mtime, inode).
    public var pinFileChanged: Bool {
        let current = FileStamp(path: configuration.pinFile)
        return state.withLock { $0.pinStamp } != current
    }

    /// Runs `body` on a logged-in session of the pool: logs in again on CKR_USER_NOT_LOGGED_IN and opens a new
    /// session when the old one is gone, each once.
    public func withSession<T>(_ op: BackendOperation, _ body: (UInt) throws(PKCS11Error) -> T) throws(PKCS11Error) -> T {
        try timed(op) { () throws(PKCS11Error) -> T in
            var (session, generation) = try acquire()
            var retried = false
            while true {
                do throws(PKCS11Error) {
                    let result = try body(session)
                    release(session, generation: generation)
                    return result
                } catch {
                    guard !retried, error.notLoggedIn || error.sessionLost else {
                        if error.sessionLost { module.closeSession(session) } else { release(session, generation: generation) }
                        throw error
                    }
                    retried = true
                    if error.sessionLost {
                        module.closeSession(session)
                        (session, generation) = try acquire()
                    } else {
                        do throws(PKCS11Error) { try login(session) } catch {
                            release(session, generation: generation)
                            throw error
                        }
                    }
                }
            }
        }
    }

    private func login(_ session: UInt) throws(PKCS11Error) {
        let (pin, stamp) = try Self.readPIN(configuration.pinFile)
        var secret = pin
        defer { wipe(&secret) }
        try module.login(session, pin: secret)
        state.withLock { $0.pinStamp = stamp }
    }

    private func acquire() throws(PKCS11Error) -> (UInt, Int) {
        let (pooled, slot, generation) = state.withLock { s -> (UInt?, UInt?, Int) in (s.idle.popLast(), s.slot, s.generation) }
        if let pooled { return (pooled, generation) }
        guard let slot else { throw PKCS11Error(rv: nil, "not connected to the token") }
        return (try module.openSession(slot: slot), generation)
    }

    private func release(_ session: UInt, generation: Int) {
        let keep = state.withLock { s -> Bool in
            guard s.generation == generation, s.idle.count < Self.maxIdleSessions else { return false }
            s.idle.append(session)
            return true
        }
        if !keep { module.closeSession(session) }
    }

    private func timed<T>(_ op: BackendOperation, _ body: () throws(PKCS11Error) -> T) throws(PKCS11Error) -> T {
        let start = monotonicSeconds()
        do {
            let result = try body()
            onCall?(op, "ok", monotonicSeconds() - start)
            return result
        } catch {
            onCall?(op, error.name ?? "error", monotonicSeconds() - start)
            throw error
        }
    }

    /// The PIN file's content without trailing line breaks/blanks, and its stamp. Never logged.
    static func readPIN(_ path: String) throws(PKCS11Error) -> ([UInt8], FileStamp?) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PKCS11Error(rv: nil, "cannot read --pkcs11-pin-file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        // The Vault credential files' rule: a regular file only kekd's uid (or root) owns and nobody else may read.
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw PKCS11Error(rv: nil, "--pkcs11-pin-file \(path) is not a regular file") }
        guard st.st_mode & 0o077 == 0 else { throw PKCS11Error(rv: nil, "--pkcs11-pin-file \(path) is accessible by group or others (chmod 600)") }
        guard st.st_uid == getuid() || st.st_uid == 0 else { throw PKCS11Error(rv: nil, "--pkcs11-pin-file \(path) is owned by uid \(st.st_uid), not kekd's uid or root") }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while bytes.count <= 4096 {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw PKCS11Error(rv: nil, "cannot read --pkcs11-pin-file \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            bytes += buffer.prefix(n)
        }
        wipe(&buffer)
        while let last = bytes.last, last == 10 || last == 13 || last == 32 || last == 9 { bytes.removeLast() }
        guard !bytes.isEmpty, bytes.count <= 256 else {
            wipe(&bytes)
            throw PKCS11Error(rv: nil, "--pkcs11-pin-file \(path) is empty or too long")
        }
        return (bytes, FileStamp(path: path))
    }
}

/// Identifies one version of a file: a change of content through an editor or an atomic replace changes it.
struct FileStamp: Equatable, Sendable {
    var inode: UInt64, size: Int64, seconds: Int, nanos: Int
    init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        inode = UInt64(st.st_ino); size = Int64(st.st_size); seconds = st.st_mtim.tv_sec; nanos = st.st_mtim.tv_nsec
    }
}

func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
