// A typed client of a running kekd: KMS v2 messages in and out over one unix-socket gRPC connection.
import GRPC
import KMSProto
import Transport

public final class KMSClient {
    private let connection: UnixGRPCClient

    public init(socketPath: String, ioTimeoutSeconds: Double = 5) throws {
        connection = try UnixGRPCClient(socketPath: socketPath, ioTimeoutSeconds: ioTimeoutSeconds)
    }

    /// Status; `.failure` carries kekd's gRPC status, a thrown error means no usable answer (socket, timeout, bytes).
    public func status(timeoutNanos: UInt64? = 3_000_000_000) throws -> Result<StatusResponse, GRPCStatus> {
        try call(.status, StatusRequest(), timeoutNanos: timeoutNanos)
    }

    public func encrypt(_ request: EncryptRequest, timeoutNanos: UInt64? = 3_000_000_000) throws -> Result<EncryptResponse, GRPCStatus> {
        try call(.encrypt, request, timeoutNanos: timeoutNanos)
    }

    public func decrypt(_ request: DecryptRequest, timeoutNanos: UInt64? = 3_000_000_000) throws -> Result<DecryptResponse, GRPCStatus> {
        try call(.decrypt, request, timeoutNanos: timeoutNanos)
    }

    public func call<Request, Response>(_ call: KMSCall<Request, Response>, _ request: Request,
                                        timeoutNanos: UInt64?) throws -> Result<Response, GRPCStatus> {
        let response = try connection.call(path: call.method.path, message: request.serializedBytes(), timeoutNanos: timeoutNanos)
        guard response.status.code == .ok, let message = response.message else { return .failure(response.status) }
        return .success(try Response(serializedBytes: message[...]))
    }

    /// Runs `total` calls of `method` with `concurrency` in flight on the one connection (kekctl bench); the request
    /// is encoded once by the caller, `onComplete` gets each raw response and its latency in ns.
    public func runPipelined(total: Int, concurrency: Int, method: KMSMethod, message: [UInt8],
                             onComplete: (GRPCResponse, UInt64) -> Void) throws {
        try connection.runPipelined(total: total, concurrency: concurrency, path: method.path, message: { message }, onComplete: onComplete)
    }
}
