import Testing
@testable import PKCS11

@Suite struct ReturnValueNameTests {
    @Test func knownCodesHaveTheirStandardNames() {
        #expect(ReturnValueNames.name(0) == "CKR_OK")
        #expect(ReturnValueNames.name(0xa0) == "CKR_PIN_INCORRECT")
        #expect(ReturnValueNames.name(0x101) == "CKR_USER_NOT_LOGGED_IN")
        #expect(ReturnValueNames.name(0xe0) == "CKR_TOKEN_NOT_PRESENT")
        #expect(ReturnValueNames.name(0x32) == "CKR_DEVICE_REMOVED")
    }

    @Test func unknownAndVendorCodesStayReadable() {
        #expect(ReturnValueNames.name(0x8000_0012) == "CKR_VENDOR_DEFINED+0x12")
        #expect(ReturnValueNames.name(0x7777) == "CKR_0x7777")
    }

    @Test func errorsCarryTheName() {
        let error = PKCS11Error.call("C_Login", 0xa0)
        #expect(error.message == "C_Login: CKR_PIN_INCORRECT")
        #expect(error.name == "CKR_PIN_INCORRECT")
        #expect(!error.badInput)
        #expect(PKCS11Error.call("C_Decrypt", 0x40).badInput)
    }
}

@Suite struct KeyFamilyTests {
    @Test func labelsRoundTrip() {
        #expect(KeyFamily.label(family: "kek", version: 3) == "kek-v3")
        #expect(KeyFamily.label(family: "kek", version: 3, retired: true) == "kek-v3-retired")
        #expect(KeyFamily.parse(label: "kek-v3", family: "kek")! == (3, false))
        #expect(KeyFamily.parse(label: "kek-v12-retired", family: "kek")! == (12, true))
        // A family whose name itself contains -v.
        #expect(KeyFamily.parse(label: "my-v2-key-v7", family: "my-v2-key")! == (7, false))
    }

    @Test func foreignOrMalformedLabelsAreIgnored() {
        for label in ["kek", "kek-v", "kek-v0", "kek-v01", "kek-vx", "kek-v1-old", "other-v1", "kek-v1234567890", "kekv1", "kek-v-1"] {
            #expect(KeyFamily.parse(label: label, family: "kek") == nil, "\(label)")
        }
    }

    @Test func highestNonRetiredVersionEncrypts() throws {
        let objects = [KeyObject(handle: 1, label: "kek-v1", id: [1]), KeyObject(handle: 2, label: "kek-v2", id: [2]),
                       KeyObject(handle: 3, label: "kek-v3-retired", id: [3]), KeyObject(handle: 4, label: "other-v9", id: [4])]
        let versions = try KeyFamily.versions(of: objects, family: "kek")
        #expect(versions.map(\.version) == [1, 2, 3])
        #expect(KeyFamily.primary(versions)?.handle == 2)
        #expect(KeyFamily.primary(versions.filter { $0.version == 3 }) == nil)
    }

    @Test func twoObjectsForOneVersionAreAnError() {
        let objects = [KeyObject(handle: 1, label: "kek-v1", id: [1]), KeyObject(handle: 2, label: "kek-v1-retired", id: [2])]
        #expect(throws: PKCS11Error.self) { try KeyFamily.versions(of: objects, family: "kek") }
    }

    @Test func keyIDIsOpaqueAndNeverReused() {
        let a = KeyFamily.keyID(tokenSerial: "s1", family: "kek", version: 2, id: [1, 2])
        #expect(a.hasPrefix("kekd-pkcs11-") && a.hasSuffix("-v2"))
        #expect(KeyFamily.version(ofKeyID: a) == 2)
        #expect(a == KeyFamily.keyID(tokenSerial: "s1", family: "kek", version: 2, id: [1, 2]))
        // A recreated object (new CKA_ID), another token or family: another key_id.
        #expect(a != KeyFamily.keyID(tokenSerial: "s1", family: "kek", version: 2, id: [1, 3]))
        #expect(a != KeyFamily.keyID(tokenSerial: "s2", family: "kek", version: 2, id: [1, 2]))
        #expect(a != KeyFamily.keyID(tokenSerial: "s1", family: "kek2", version: 2, id: [1, 2]))
        let stem = String(a.dropLast(2))  // "kekd-pkcs11-<32 hex>-"
        let upper: String = "kekd-pkcs11-" + String(repeating: "A", count: 32) + "-v1"
        let accented: String = "kekd-pkcs11-é" + String(a.dropFirst(13))
        let bads: [String] = ["kekd-vault-00-v2", "kekd-pkcs11-abc-v2", a + "x", String(a.dropLast(1)) + "02", upper,
                              stem + "v0", stem + "v+2", stem + "v", accented]
        for bad in bads {
            #expect(KeyFamily.version(ofKeyID: bad) == nil, "\(bad)")
        }
    }

    @Test func wrappedLocalKEKRoundTripsAndRejectsGarbage() {
        let wrapped = WrappedLocalKEK(version: 4, keyObjectID: [0xab, 0x01], iv: Array(repeating: 7, count: 12), sealed: Array(repeating: 9, count: 48))
        #expect(WrappedLocalKEK(text: Array(wrapped.text.utf8)) == wrapped)
        for bad in ["", "p11:v4", "p11:v0:ab:" + String(repeating: "07", count: 12) + ":" + String(repeating: "09", count: 48),
                    "p11:v4:ab:0707:" + String(repeating: "09", count: 48), "p11:v4:AB:" + String(repeating: "07", count: 12) + ":" + String(repeating: "09", count: 48),
                    "p11:v4::" + String(repeating: "07", count: 12) + ":" + String(repeating: "09", count: 48), "vault:v1:abc"] {
            #expect(WrappedLocalKEK(text: Array(bad.utf8)) == nil, "\(bad)")
        }
    }

    @Test func configurationFlags() throws {
        let base = ["pkcs11-module": "/m.so", "pkcs11-token-label": "t", "pkcs11-pin-file": "/p", "pkcs11-key-label": "kek"]
        let c = try PKCS11Configuration.parse(base) { _ in nil }
        #expect(c.token == .label("t") && c.pollInterval == 30)
        var slot = base
        slot["pkcs11-token-label"] = nil
        slot["pkcs11-slot"] = "7"
        #expect(try PKCS11Configuration.parse(slot) { _ in nil }.token == .slot(7))
        var both = base
        both["pkcs11-slot"] = "1"
        #expect(throws: PKCS11Error.self) { try PKCS11Configuration.parse(both) { _ in nil } }
        var missing = base
        missing["pkcs11-pin-file"] = nil
        #expect(throws: PKCS11Error.self) { try PKCS11Configuration.parse(missing) { _ in nil } }
        var poll = base
        poll["pkcs11-poll-interval"] = "2s"
        #expect(try PKCS11Configuration.parse(poll) { $0 == "2s" ? 2 : nil }.pollInterval == 2)
        poll["pkcs11-poll-interval"] = "0s"
        #expect(throws: PKCS11Error.self) { try PKCS11Configuration.parse(poll) { _ in 0 } }
    }
}
