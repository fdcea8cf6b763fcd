// Who is at the other end of kekd's socket, as the kernel says (SO_PEERCRED): the serving edge authorises by it and
// the audit log records it. A leaf of its own so that neither of those depends on the other for it.

/// The connected process behind a unix socket: its pid, uid and gid when it connected.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}
