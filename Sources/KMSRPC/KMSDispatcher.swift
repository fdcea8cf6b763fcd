// Routes a decoded gRPC request to the KMS service and describes the outcome for the audit log and metrics.
import GRPC
import KMS
import KMSProto
import Locking
import Protobuf

/// What happened to one call, without any secret: the response bytes are the only sensitive part.
public struct CallOutcome: Sendable {
    /// nil for a path that is not one of ours.
    public var method: KMSMethod?
    public var status: GRPCStatus
    public var response: [UInt8]?
    public var uid: String?
    public var keyID: String?
    public var ciphertext: [UInt8]?
    /// The backend that served the call when it is not the encrypting one (a Decrypt routed to a decrypt-only backend).
    public var backend: String?

    public init(method: KMSMethod?, status: GRPCStatus, response: [UInt8]? = nil, uid: String? = nil, keyID: String? = nil,
                ciphertext: [UInt8]? = nil, backend: String? = nil) {
        self.method = method
        self.status = status
        self.response = response
        self.uid = uid
        self.keyID = keyID
        self.ciphertext = ciphertext
        self.backend = backend
    }
}

/// A request decoded, before any backend work: what the server needs to decide where the call runs.
public enum DecodedCall: Sendable {
    case status(StatusRequest)
    case encrypt(EncryptRequest)
    case decrypt(DecryptRequest)
    /// Not decodable: answered at once with this outcome.
    case malformed(CallOutcome)
}

public struct KMSDispatcher: Sendable {
    public let service: KMSService
    /// Shared by the connections: one Decrypt's annotations, reused while the next ones carry the same bytes.
    private let annotationsMemo = LockedValue(AnnotationsMemo())

    public init(service: KMSService) { self.service = service }

    public func decode(_ method: KMSMethod, message: ArraySlice<UInt8>) -> DecodedCall {
        do {
            switch method {
            case .status: return .status(try StatusRequest(serializedBytes: message))
            case .encrypt: return .encrypt(try EncryptRequest(serializedBytes: message))
            case .decrypt:
                return .decrypt(try annotationsMemo.withLock { (memo) throws(ProtobufError) in
                    try DecryptRequest(serializedBytes: message, memo: &memo)
                })
            }
        } catch {
            return .malformed(CallOutcome(method: method, status: Self.badRequest(error)))
        }
    }

    /// Whether the backend would wait on the network or a device for this call now (then it runs on the pool).
    public func wouldBlock(_ call: DecodedCall) -> Bool {
        switch call {
        case .status, .malformed: false
        case .encrypt: service.backend.wouldBlock(.encrypt)
        case .decrypt(let request): service.backend.wouldBlock(.decrypt(keyID: request.keyID, annotations: request.annotations))
        }
    }

    /// `context` reaches the backend: its deadline bounds any waiting, its cancellation stops it.
    public func handle(_ call: DecodedCall, context: CallContext) -> CallOutcome {
        switch call {
        case .malformed(let outcome):
            return outcome
        case .status:
            let op = KMSMethod.status
            let (response, bytes) = service.statusAnswer()
            // A healthz string alone does not stop kube-apiserver from writing with its cached DEK seed
            // (kubernetes#138950): an unhealthy backend must fail Status at the gRPC level.
            guard response.healthz == "ok", !response.keyID.isEmpty else {
                return CallOutcome(method: op, status: GRPCStatus(.unavailable, "key backend \(response.healthz)"), keyID: response.keyID)
            }
            return CallOutcome(method: op, status: .ok, response: bytes, keyID: response.keyID)
        case .encrypt(let request):
            let op = KMSMethod.encrypt
            do {
                let response = try service.encrypt(request, context: context)
                return CallOutcome(method: op, status: .ok, response: response.serializedBytes(), uid: request.uid,
                                   keyID: response.keyID, ciphertext: response.ciphertext)
            } catch {
                return CallOutcome(method: op, status: Self.status(error), uid: request.uid)
            }
        case .decrypt(let request):
            let op = KMSMethod.decrypt
            do {
                let response = try service.decrypt(request, context: context)
                return CallOutcome(method: op, status: .ok, response: response.serializedBytes(), uid: request.uid,
                                   keyID: request.keyID, ciphertext: request.ciphertext,
                                   backend: service.decryptBackendName(keyID: request.keyID))
            } catch {
                return CallOutcome(method: op, status: Self.status(error), uid: request.uid, keyID: request.keyID,
                                   ciphertext: request.ciphertext, backend: service.decryptBackendName(keyID: request.keyID))
            }
        }
    }

    public static func badRequest(_ error: some Error) -> GRPCStatus {
        GRPCStatus(.invalidArgument, "malformed request message: \(error)")
    }

    public static func status(_ error: KMSError) -> GRPCStatus {
        GRPCStatus(error.code, error.message)
    }
}
