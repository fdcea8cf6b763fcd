import Census
import Etcd
import JSON
import KMSProto
import Testing

@Suite struct StoredValueTests {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func kmsV2ValuesGiveProviderKeyIDAnnotationKeysAndDEKSourceType() throws {
        let object = EncryptedObject(encryptedData: [1, 2, 3], keyID: "kekd-v2", encryptedDEKSource: [9, 9],
                                     annotations: ["kekd.example.com/v": [7], "a.example.com/x": [8]],
                                     encryptedDEKSourceType: .hkdfSHA256XNonceAESGCMSeed)
        let stored = StoredValue.classify(bytes("k8s:enc:kms:v2:kekd:") + object.serializedBytes())
        #expect(stored == StoredValueClass(kind: .kmsV2, provider: "kekd", keyID: "kekd-v2",
                                           annotationKeys: ["a.example.com/x", "kekd.example.com/v"],
                                           dekSourceType: .hkdfSHA256XNonceAESGCMSeed))
        // Pre-1.29 apiservers: the DEK itself, enum value 0 (omitted on the wire).
        let old = StoredValue.classify(bytes("k8s:enc:kms:v2:p:") + EncryptedObject(keyID: "k1").serializedBytes())
        #expect(old.dekSourceType == .aesGCMKey && old.keyID == "k1" && old.annotationKeys.isEmpty)
    }

    @Test func encryptedObjectRoundTripsAndKeepsUnknownEnumValues() throws {
        let object = EncryptedObject(encryptedData: [0, 1], keyID: "k", encryptedDEKSource: [2], annotations: ["x": []],
                                     encryptedDEKSourceType: .unrecognized(7))
        #expect(try EncryptedObject(serializedBytes: object.serializedBytes()) == object)
        // Hand-written wire bytes, as apiserver's Go encoder writes them: keyID (2) "ab", type (5) = 1.
        let wire: [UInt8] = [0x12, 0x02, 0x61, 0x62, 0x28, 0x01]
        let decoded = try EncryptedObject(serializedBytes: wire)
        #expect(decoded.keyID == "ab" && decoded.encryptedDEKSourceType == .hkdfSHA256XNonceAESGCMSeed)
        #expect(decoded.serializedBytes() == wire)
    }

    @Test func aKMSv2PrefixWithAnUndecodableObjectKeepsTheProviderButNoKeyID() {
        let stored = StoredValue.classify(bytes("k8s:enc:kms:v2:kekd:") + [0x12, 0x7f, 0x61])  // length past the end
        #expect(stored == StoredValueClass(kind: .kmsV2, provider: "kekd", keyID: nil))
    }

    @Test func otherPrefixes() {
        #expect(StoredValue.classify(bytes("k8s:enc:kms:v1:old-kms:") + [0, 2, 1, 2, 3]) == StoredValueClass(kind: .kmsV1, provider: "old-kms"))
        #expect(StoredValue.classify(bytes("k8s:enc:aescbc:v1:key1:") + [1, 2]) == StoredValueClass(kind: .aescbc, keyID: "key1"))
        #expect(StoredValue.classify(bytes("k8s:enc:aesgcm:v1:key2:") + [1]) == StoredValueClass(kind: .aesgcm, keyID: "key2"))
        #expect(StoredValue.classify(bytes("k8s:enc:secretbox:v1:sb:")) == StoredValueClass(kind: .secretbox, keyID: "sb"))
        #expect(StoredValue.classify(bytes("{\"kind\":\"Secret\"}")).kind == .identity)
        #expect(StoredValue.classify([0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0c]).kind == .identity)
    }

    @Test func whatIsNotAKnownFormatIsUnknown() {
        for value in [[], bytes("garbage"), bytes(" {}"), [0x6b, 0x38, 0x73], bytes("k8s:enc:kms:v2:"), bytes("k8s:enc:kms:v2::x"),
                      bytes("k8s:enc:kms:v1:no-colon"), bytes("k8s:enc:aescbc:v1:") + [UInt8](repeating: 0x61, count: 400) + bytes(":"),
                      bytes("k8s:enc:aesgcm:v1:") + [0xff, 0xfe] + bytes(":x"), bytes("k8s:enc:unknown:v1:x:")] {
            #expect(StoredValue.classify(value).kind == .unknown, "\(value.prefix(24))")
        }
    }

    @Test func resourceNames() {
        let prefix = bytes("/registry/")
        #expect(StoredValue.resource(ofKey: bytes("/registry/secrets/default/s1"), prefix: prefix) == "secrets")
        #expect(StoredValue.resource(ofKey: bytes("/registry/namespaces/default"), prefix: prefix) == "namespaces")
        #expect(StoredValue.resource(ofKey: bytes("/registry/example.com/widgets/ns/w1"), prefix: prefix) == "example.com/widgets")
        #expect(StoredValue.resource(ofKey: bytes("/registry/apiregistration.k8s.io/apiservices/v1.apps"), prefix: prefix)
                == "apiregistration.k8s.io/apiservices")
        #expect(StoredValue.resource(ofKey: bytes("/registry/ranges/serviceips"), prefix: prefix) == "ranges")
        #expect(StoredValue.resource(ofKey: bytes("/registry/health"), prefix: prefix) == "health")
        #expect(StoredValue.resource(ofKey: bytes("/registry/example.com"), prefix: prefix) == "example.com")
        #expect(StoredValue.resource(ofKey: bytes("/registry/"), prefix: prefix) == nil)
        #expect(StoredValue.resource(ofKey: bytes("/other/secrets/x"), prefix: prefix) == nil)
        #expect(Census.normalized(prefix: "/registry") == "/registry/")
    }

    @Test func prefixEnd() {
        #expect(EtcdClient.prefixEnd(bytes("/registry/")) == bytes("/registry0"))
        #expect(EtcdClient.prefixEnd([0x61, 0xff, 0xff]) == [0x62])
        #expect(EtcdClient.prefixEnd([0xff]) == [0])
        #expect(EtcdClient.prefixEnd([]) == [0])
    }

    @Test func reportGroupsJSONShapeAndRequireKeyID() throws {
        var report = CensusReport(revision: 5)
        report.counts[CensusGroup(resource: "secrets", kind: .kmsV2, provider: "kekd", keyID: "k2")] = 3
        report.counts[CensusGroup(resource: "secrets", kind: .kmsV2, provider: "kekd", keyID: "k1")] = 2
        report.counts[CensusGroup(resource: "secrets", kind: .identity)] = 1
        report.counts[CensusGroup(resource: "configmaps", kind: .aescbc, keyID: "key1")] = 4
        #expect(report.objects == 10)
        #expect(report.groups.map { $0.group.resource } == ["configmaps", "secrets", "secrets", "secrets"])
        let notUnder = report.notUnder(keyID: "k2")
        #expect(notUnder.count == 7 && notUnder.byKind == [.kmsV2: 2, .identity: 1, .aescbc: 4])
        #expect(report.notUnder(keyID: "k1").count == 8)
        let json = report.json
        #expect(json["objects"]?.int == 10)
        let groups = try #require(json["groups"]?.array)
        #expect(groups.count == 4)
        #expect(groups[0].object?.keys.sorted() == ["count", "key_id", "kind", "provider", "resource"])
        #expect(groups[0]["provider"]?.isNull == true && groups[0]["kind"]?.string == "aescbc" && groups[0]["key_id"]?.string == "key1")
        #expect(groups[3]["kind"]?.string == "identity" && groups[3]["key_id"]?.isNull == true)
    }
}
