import KMSProto
import KMSRPC
import Testing

@Test func theMethodTableMatchesTheKMSv2Service() {
    #expect(KMSMethod.allCases.map(\.path) == ["/v2.KeyManagementService/Status", "/v2.KeyManagementService/Encrypt",
                                               "/v2.KeyManagementService/Decrypt"])
    #expect(KMSMethod.allCases.map(\.op) == ["Status", "Encrypt", "Decrypt"])
    #expect(KMSMethod.paths == Set(KMSMethod.allCases.map(\.path)))
    for method in KMSMethod.allCases {
        #expect(KMSMethod(op: method.op) == method)
        #expect(KMSMethod(rawValue: method.path) == method)
        #expect(KMSMethod.auditOp(method, path: method.path) == method.op)
    }
}

@Test func unknownNamesAreNoMethod() {
    #expect(KMSMethod(op: "status") == nil)
    #expect(KMSMethod(op: "") == nil)
    #expect(KMSMethod(rawValue: "/v1beta1.KeyManagementService/Encrypt") == nil)
    // The audit log names a foreign path as it came.
    #expect(KMSMethod.auditOp(nil, path: "/grpc.health.v1.Health/Check") == "/grpc.health.v1.Health/Check")
}

@Test func eachCallNamesItsMethod() {
    #expect(KMSCall<StatusRequest, StatusResponse>.status.method == .status)
    #expect(KMSCall<EncryptRequest, EncryptResponse>.encrypt.method == .encrypt)
    #expect(KMSCall<DecryptRequest, DecryptResponse>.decrypt.method == .decrypt)
}
