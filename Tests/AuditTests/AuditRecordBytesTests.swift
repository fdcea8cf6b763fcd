// The exact bytes of a record: whatever changes inside Audit (types, encoder), a log line must not.
@testable import Audit
import Foundation
import PeerIdentity
import Testing

@Suite struct AuditRecordBytesTests {
    @Test func aRecordWithAndWithoutAPeerIsByteForByteTheSame() {
        var event = sampleEvent(7, outcome: "INVALID_ARGUMENT")
        event.peer = PeerCredentials(pid: -1, uid: UInt32.max, gid: 7)
        let body = AuditRecordFormat.body(of: event, seq: 3, prevChain: nil, droppedBefore: 0)
        #expect(String(decoding: body, as: UTF8.self) == #"{"seq":3,"time":"2026-09-21T14:13:20.000000000Z","op":"Encrypt","uid":"uid-7","#
                + #""key_id":"k1","backend":"file","outcome":"INVALID_ARGUMENT","message":"failed 7","latency_us":7,"#
                + #""peer":{"pid":-1,"uid":4294967295,"gid":7},"connection":0,"stream":7,"ciphertext_sha256":"fa55d876033f8281""#)
        event.peer = nil
        let anonymous = AuditRecordFormat.body(of: event, seq: 4, prevChain: nil, droppedBefore: 0)
        #expect(String(decoding: anonymous, as: UTF8.self) == #"{"seq":4,"time":"2026-09-21T14:13:20.000000000Z","op":"Encrypt","#
                + #""uid":"uid-7","key_id":"k1","backend":"file","outcome":"INVALID_ARGUMENT","message":"failed 7","latency_us":7,"#
                + #""peer":null,"connection":0,"stream":7,"ciphertext_sha256":"fa55d876033f8281""#)
    }
}
