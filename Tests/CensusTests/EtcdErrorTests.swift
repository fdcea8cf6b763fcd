@testable import Etcd
import HTTPClient
import JSON
import Testing

/// How transport failures and gateway error replies become one-line EtcdErrors (the live cases are proven against a
/// real etcd in Tests/Interop/test_census.py; the compaction reply below is what etcd 3.5's gateway sends).
@Suite struct EtcdErrorTests {
    let endpoint = try! Endpoint(url: "https://127.0.0.1:2379", what: "etcd endpoint")

    @Test func transportFailures() {
        #expect(EtcdClient.classify(.connect("127.0.0.1:2379: Connection refused"), endpoint: endpoint).kind == .unreachable)
        #expect(EtcdClient.classify(.timeout("connect to 127.0.0.1:2379"), endpoint: endpoint).kind == .unreachable)
        #expect(EtcdClient.classify(.certificateVerification("unable to get local issuer certificate"), endpoint: endpoint).kind
                == .serverCertificateNotTrusted)
        let refused = EtcdClient.classify(.tls("handshake failed: error:0A000412:SSL routines::sslv3 alert bad certificate"), endpoint: endpoint)
        #expect(refused.kind == .clientCertificateRefused && refused.message.contains("https://127.0.0.1:2379"))
        #expect(EtcdClient.classify(.tls("read: tlsv13 alert certificate required"), endpoint: endpoint).kind == .clientCertificateRefused)
        #expect(EtcdClient.classify(.protocolError("malformed HTTP status line"), endpoint: endpoint).kind == .failed)
    }

    @Test func gatewayErrorReplies() {
        let compacted = JSONValue.parse(Array(#"{"error":"etcdserver: mvcc: required revision has been compacted","code":11,"message":"etcdserver: mvcc: required revision has been compacted"}"#.utf8))
        let error = EtcdClient.classify(status: 400, reply: compacted, revision: 42)
        #expect(error.kind == .compacted && error.message.contains("revision 42") && error.message.contains("run again"))
        #expect(EtcdClient.classify(status: 404, reply: nil, revision: nil).message.contains("JSON gateway"))
        let denied = EtcdClient.classify(status: 403, reply: JSONValue.parse(Array(#"{"code":7,"message":"etcdserver: permission denied"}"#.utf8)), revision: nil)
        #expect(denied.kind == .failed && denied.message == "etcd refused the range request (HTTP 403, etcdserver: permission denied)")
        #expect(!denied.message.contains("\n"))
    }
}
