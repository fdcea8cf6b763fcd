// Routes a decoded gRPC request to the KMS service and describes the outcome for the audit log and metrics.
import GRPC
import KMS
import KMSProto

/// What happened to one call, without any secret: the response bytes are the only sensitive part.
struct CallOutcome: Sendable {
    var op: String
    var status: GRPCStatus
    var response: [UInt8]?
    var uid: String?
    var keyID: String?
    var ciphertext: [UInt8]?
    /// The backend that served the call when it is not the encrypting one (a Decrypt routed to a decrypt-only backend).
    var backend: String?
}

enum KMSMethod: String, CaseIterable, Sendable {
    case status = "/v2.KeyManagementService/Status"
    case encrypt = "/v2.KeyManagementService/Encrypt"
    case decrypt = "/v2.KeyManagementService/Decrypt"

    var op: String {
        switch self { case .status: "Status"; case .encrypt: "Encrypt"; case .decrypt: "Decrypt" }
    }

    static let paths = Set(allCases.map(\.rawValue))

    /// The audit/metrics name of a path: the method name for ours, the raw path (audit) or "other" (metrics).
    static func op(forPath path: String) -> String { KMSMethod(rawValue: path)?.op ?? path }
}

struct KMSDispatcher: Sendable {
    let service: KMSService

    func handle(_ method: KMSMethod, message: [UInt8]) -> CallOutcome {
        switch method {
        case .status:
            do {
                let request = try StatusRequest(serializedBytes: message[...])
                let response = service.status(request)
                // A healthz string alone does not stop kube-apiserver from writing with its cached DEK seed
                // (kubernetes#138950): an unhealthy backend must fail Status at the gRPC level.
                guard response.healthz == "ok", !response.keyID.isEmpty else {
                    return CallOutcome(op: method.op, status: GRPCStatus(.unavailable, "key backend \(response.healthz)"), keyID: response.keyID)
                }
                return CallOutcome(op: method.op, status: .ok, response: response.serializedBytes(), keyID: response.keyID)
            } catch {
                return CallOutcome(op: method.op, status: Self.badRequest(error))
            }
        case .encrypt:
            let request: EncryptRequest
            do { request = try EncryptRequest(serializedBytes: message[...]) } catch {
                return CallOutcome(op: method.op, status: Self.badRequest(error))
            }
            do {
                let response = try service.encrypt(request)
                return CallOutcome(op: method.op, status: .ok, response: response.serializedBytes(), uid: request.uid,
                                   keyID: response.keyID, ciphertext: response.ciphertext)
            } catch {
                return CallOutcome(op: method.op, status: Self.status(error), uid: request.uid)
            }
        case .decrypt:
            let request: DecryptRequest
            do { request = try DecryptRequest(serializedBytes: message[...]) } catch {
                return CallOutcome(op: method.op, status: Self.badRequest(error))
            }
            do {
                let response = try service.decrypt(request)
                return CallOutcome(op: method.op, status: .ok, response: response.serializedBytes(), uid: request.uid,
                                   keyID: request.keyID, ciphertext: request.ciphertext,
                                   backend: service.decryptBackendName(keyID: request.keyID))
            } catch {
                return CallOutcome(op: method.op, status: Self.status(error), uid: request.uid, keyID: request.keyID,
                                   ciphertext: request.ciphertext, backend: service.decryptBackendName(keyID: request.keyID))
            }
        }
    }

    static func badRequest(_ error: some Error) -> GRPCStatus {
        GRPCStatus(.invalidArgument, "malformed request message: \(error)")
    }

    static func status(_ error: KMSError) -> GRPCStatus {
        GRPCStatus(GRPCStatusCode(rawValue: error.code.rawValue) ?? .internalError, error.message)
    }
}
