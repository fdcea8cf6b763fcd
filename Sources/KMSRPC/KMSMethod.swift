// The KMS v2 service's methods as kekd serves them and kekctl calls them: one table, matched once per call.
import KMSProto

/// A method of `v2.KeyManagementService`, named by its gRPC path.
public enum KMSMethod: String, CaseIterable, Sendable {
    case status = "/v2.KeyManagementService/Status"
    case encrypt = "/v2.KeyManagementService/Encrypt"
    case decrypt = "/v2.KeyManagementService/Decrypt"

    public var path: String { rawValue }

    /// The method's name in the audit log, metrics and kekctl's flags.
    public var op: String {
        switch self { case .status: "Status"; case .encrypt: "Encrypt"; case .decrypt: "Decrypt" }
    }

    public init?(op: String) {
        guard let method = Self.allCases.first(where: { $0.op == op }) else { return nil }
        self = method
    }

    public static let paths = Set(allCases.map(\.rawValue))

    /// The audit log's name of a call's method: ours by name, a foreign path as it came.
    public static func auditOp(_ method: KMSMethod?, path: String) -> String { method?.op ?? path }
}

/// A method with the message types it takes and answers: a client can only send the request the method expects.
public struct KMSCall<Request: ProtoMessage, Response: ProtoMessage>: Sendable {
    public let method: KMSMethod
}

extension KMSCall where Request == StatusRequest, Response == StatusResponse {
    public static var status: Self { Self(method: .status) }
}

extension KMSCall where Request == EncryptRequest, Response == EncryptResponse {
    public static var encrypt: Self { Self(method: .encrypt) }
}

extension KMSCall where Request == DecryptRequest, Response == DecryptResponse {
    public static var decrypt: Self { Self(method: .decrypt) }
}
