// The PKCS#11 C API as small Swift calls: the vendor module is dlopen'ed and reached through its function list.
// Each call returns or throws a `PKCS11Error` naming the CK_RV. No policy here: sessions, login and keys are the
// token layer's business.
import CPKCS11
import Glibc

/// A failed PKCS#11 call (or a failure around one, then `rv` is nil). The message never holds a PIN or key bytes.
public struct PKCS11Error: Error, Sendable, Equatable, CustomStringConvertible {
    public var rv: UInt?
    public var message: String
    public init(rv: UInt?, _ message: String) { self.rv = rv; self.message = message }
    public static func call(_ function: String, _ rv: UInt) -> PKCS11Error {
        PKCS11Error(rv: rv, "\(function): \(ReturnValueNames.name(rv))")
    }
    public var description: String { message }
    /// The CK_RV name, or nil when no PKCS#11 call failed.
    public var name: String? { rv.map(ReturnValueNames.name) }

    /// The session is gone: open another one.
    var sessionLost: Bool { rv == UInt(CKR_SESSION_HANDLE_INVALID) || rv == UInt(CKR_SESSION_CLOSED) }
    var notLoggedIn: Bool { rv == UInt(CKR_USER_NOT_LOGGED_IN) }
    /// The token refused the PIN itself: trying the same PIN again only brings a lockout closer.
    var pinRefused: Bool {
        guard let rv else { return false }
        return [CKR_PIN_INCORRECT, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_EXPIRED, CKR_PIN_LOCKED].map { UInt($0) }.contains(rv)
    }
    /// The caller's data was refused (a tampered or foreign wrapped key), not the token failing.
    public var badInput: Bool {
        guard let rv else { return false }
        return [CKR_ENCRYPTED_DATA_INVALID, CKR_ENCRYPTED_DATA_LEN_RANGE, CKR_DATA_INVALID, CKR_DATA_LEN_RANGE,
                CKR_MECHANISM_PARAM_INVALID].map { UInt($0) }.contains(rv)
    }
}

/// Token facts kekd uses (the blank-padded fixed-size fields trimmed).
public struct TokenInfo: Sendable, Equatable {
    public var label: String
    public var serial: String
    public var model: String
}

/// A secret-key object found on the token.
public struct KeyObject: Sendable, Equatable {
    public var handle: UInt
    public var label: String
    public var id: [UInt8]
}

public final class PKCS11Module: @unchecked Sendable {
    // The function list is the module's static table and every PKCS#11 function is thread-safe after C_Initialize
    // with CKF_OS_LOCKING_OK: nothing here is mutated after init.
    private let library: UnsafeMutableRawPointer
    private let functions: UnsafeMutablePointer<CK_FUNCTION_LIST>
    public let path: String

    /// Loads the module and reads its function list (does not initialize it).
    public init(path: String) throws(PKCS11Error) {
        self.path = path
        guard let library = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown error"
            throw PKCS11Error(rv: nil, "cannot load PKCS#11 module \(path): \(reason)")
        }
        guard let symbol = dlsym(library, "C_GetFunctionList") else {
            dlclose(library)
            throw PKCS11Error(rv: nil, "\(path) is not a PKCS#11 module (no C_GetFunctionList)")
        }
        let getFunctionList = unsafeBitCast(symbol, to: CK_C_GetFunctionList.self)
        var list: UnsafeMutablePointer<CK_FUNCTION_LIST>?
        let rv = getFunctionList(&list)
        guard rv == CKR_OK, let list else {
            dlclose(library)
            throw PKCS11Error.call("C_GetFunctionList", rv)
        }
        self.library = library
        self.functions = list
    }

    private var f: CK_FUNCTION_LIST { functions.pointee }

    private func check(_ function: String, _ rv: CK_RV) throws(PKCS11Error) {
        if rv != CKR_OK { throw PKCS11Error.call(function, rv) }
    }

    /// C_Initialize with OS locking (the module may use threads; we call it from several). Already initialized
    /// (another user in this process) counts as success.
    public func initialize() throws(PKCS11Error) {
        var args = CK_C_INITIALIZE_ARGS()
        args.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        let rv = withUnsafeMutablePointer(to: &args) { f.C_Initialize($0) }
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED { return }
        try check("C_Initialize", rv)
    }

    public func finalize() { _ = f.C_Finalize(nil) }

    public func slots() throws(PKCS11Error) -> [UInt] {
        var count: CK_ULONG = 0
        try check("C_GetSlotList", f.C_GetSlotList(CK_BBOOL(CK_TRUE), nil, &count))
        var slots = [CK_SLOT_ID](repeating: 0, count: Int(count))
        try check("C_GetSlotList", f.C_GetSlotList(CK_BBOOL(CK_TRUE), &slots, &count))
        return Array(slots.prefix(Int(count)))
    }

    public func tokenInfo(slot: UInt) throws(PKCS11Error) -> TokenInfo {
        var info = CK_TOKEN_INFO()
        try check("C_GetTokenInfo", f.C_GetTokenInfo(slot, &info))
        return TokenInfo(label: Self.padded(info.label), serial: Self.padded(info.serialNumber), model: Self.padded(info.model))
    }

    public func mechanisms(slot: UInt) throws(PKCS11Error) -> [UInt] {
        var count: CK_ULONG = 0
        try check("C_GetMechanismList", f.C_GetMechanismList(slot, nil, &count))
        var list = [CK_MECHANISM_TYPE](repeating: 0, count: Int(count))
        try check("C_GetMechanismList", f.C_GetMechanismList(slot, &list, &count))
        return Array(list.prefix(Int(count)))
    }

    public func openSession(slot: UInt) throws(PKCS11Error) -> UInt {
        var session: CK_SESSION_HANDLE = 0
        try check("C_OpenSession", f.C_OpenSession(slot, CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nil, nil, &session))
        return session
    }

    public func closeSession(_ session: UInt) { _ = f.C_CloseSession(session) }

    /// C_Login as the normal user; already logged in counts as success.
    public func login(_ session: UInt, pin: [UInt8]) throws(PKCS11Error) {
        var pin = pin
        defer { for i in pin.indices { pin[i] = 0 } }
        let rv = f.C_Login(session, CK_USER_TYPE(CKU_USER), &pin, CK_ULONG(pin.count))
        if rv == CKR_USER_ALREADY_LOGGED_IN { return }
        try check("C_Login", rv)
    }

    public func logout(_ session: UInt) { _ = f.C_Logout(session) }

    /// Every AES secret-key token object with its label and CKA_ID.
    public func findSecretKeys(_ session: UInt) throws(PKCS11Error) -> [KeyObject] {
        var keyClass = CK_OBJECT_CLASS(CKO_SECRET_KEY)
        var keyType = CK_KEY_TYPE(CKK_AES)
        var onToken = CK_BBOOL(CK_TRUE)
        var handles: [CK_OBJECT_HANDLE] = []
        let rv: CK_RV = withUnsafeMutableBytes(of: &keyClass) { c in
            withUnsafeMutableBytes(of: &keyType) { t in
                withUnsafeMutableBytes(of: &onToken) { o in
                    var template = [Self.attribute(CKA_CLASS, c), Self.attribute(CKA_KEY_TYPE, t), Self.attribute(CKA_TOKEN, o)]
                    return f.C_FindObjectsInit(session, &template, CK_ULONG(template.count))
                }
            }
        }
        try check("C_FindObjectsInit", rv)
        defer { _ = f.C_FindObjectsFinal(session) }
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 64)
        while true {
            var found: CK_ULONG = 0
            try check("C_FindObjects", f.C_FindObjects(session, &batch, CK_ULONG(batch.count), &found))
            if found == 0 { break }
            handles += batch.prefix(Int(found))
        }
        var keys: [KeyObject] = []
        for handle in handles {
            let label = try attributeBytes(session, handle, CKA_LABEL)
            let id = try attributeBytes(session, handle, CKA_ID)
            keys.append(KeyObject(handle: handle, label: String(decoding: label, as: UTF8.self), id: id))
        }
        return keys
    }

    private func attributeBytes(_ session: UInt, _ handle: UInt, _ type: UInt) throws(PKCS11Error) -> [UInt8] {
        var attribute = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: nil, ulValueLen: 0)
        try check("C_GetAttributeValue", f.C_GetAttributeValue(session, handle, &attribute, 1))
        guard attribute.ulValueLen != UInt.max, attribute.ulValueLen <= 4096 else { return [] }
        var bytes = [UInt8](repeating: 0, count: Int(attribute.ulValueLen))
        let rv: CK_RV = bytes.withUnsafeMutableBytes { buffer in
            attribute.pValue = buffer.baseAddress
            return f.C_GetAttributeValue(session, handle, &attribute, 1)
        }
        try check("C_GetAttributeValue", rv)
        return Array(bytes.prefix(Int(attribute.ulValueLen)))
    }

    /// Generates an AES-256 token key that never leaves the token: sensitive, non-extractable, encrypt/decrypt only.
    public func generateAESKey(_ session: UInt, label: String, id: [UInt8]) throws(PKCS11Error) -> UInt {
        var label = Array(label.utf8)
        var id = id
        var yes = CK_BBOOL(CK_TRUE), no = CK_BBOOL(CK_FALSE)
        var length = CK_ULONG(32)
        var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_AES_KEY_GEN), pParameter: nil, ulParameterLen: 0)
        var handle: CK_OBJECT_HANDLE = 0
        let rv: CK_RV = label.withUnsafeMutableBytes { l in
            id.withUnsafeMutableBytes { i in
                withUnsafeMutableBytes(of: &yes) { y in
                    withUnsafeMutableBytes(of: &no) { n in
                        withUnsafeMutableBytes(of: &length) { len in
                            var template = [
                                Self.attribute(CKA_LABEL, l), Self.attribute(CKA_ID, i), Self.attribute(CKA_VALUE_LEN, len),
                                Self.attribute(CKA_TOKEN, y), Self.attribute(CKA_PRIVATE, y), Self.attribute(CKA_SENSITIVE, y),
                                Self.attribute(CKA_EXTRACTABLE, n), Self.attribute(CKA_ENCRYPT, y), Self.attribute(CKA_DECRYPT, y),
                                Self.attribute(CKA_WRAP, n), Self.attribute(CKA_UNWRAP, n), Self.attribute(CKA_SIGN, n),
                                Self.attribute(CKA_VERIFY, n), Self.attribute(CKA_DERIVE, n), Self.attribute(CKA_MODIFIABLE, y),
                            ]
                            return f.C_GenerateKey(session, &mechanism, &template, CK_ULONG(template.count), &handle)
                        }
                    }
                }
            }
        }
        try check("C_GenerateKey", rv)
        return handle
    }

    public func setLabel(_ session: UInt, _ handle: UInt, label: String) throws(PKCS11Error) {
        var bytes = Array(label.utf8)
        let rv: CK_RV = bytes.withUnsafeMutableBytes { l in
            var template = [Self.attribute(CKA_LABEL, l)]
            return f.C_SetAttributeValue(session, handle, &template, 1)
        }
        try check("C_SetAttributeValue", rv)
    }

    /// AES-GCM with a 128-bit tag on the token: returns ciphertext || tag.
    public func encryptGCM(_ session: UInt, key: UInt, iv: [UInt8], aad: [UInt8], plaintext: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        try gcm(session, key: key, iv: iv, aad: aad, input: plaintext, outputCapacity: plaintext.count + 16, encrypt: true)
    }

    public func decryptGCM(_ session: UInt, key: UInt, iv: [UInt8], aad: [UInt8], sealed: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        try gcm(session, key: key, iv: iv, aad: aad, input: sealed, outputCapacity: sealed.count, encrypt: false)
    }

    private func gcm(_ session: UInt, key: UInt, iv: [UInt8], aad: [UInt8], input: [UInt8], outputCapacity: Int,
                     encrypt: Bool) throws(PKCS11Error) -> [UInt8] {
        var iv = iv, aad = aad, input = input
        var output = [UInt8](repeating: 0, count: max(outputCapacity, 1))
        var outputLength = CK_ULONG(output.count)
        let name = encrypt ? "C_Encrypt" : "C_Decrypt"
        let (initRV, rv): (CK_RV, CK_RV) = iv.withUnsafeMutableBufferPointer { ivp in
            aad.withUnsafeMutableBufferPointer { aadp in
                var params = CK_GCM_PARAMS(pIv: ivp.baseAddress, ulIvLen: CK_ULONG(ivp.count), ulIvBits: CK_ULONG(ivp.count * 8),
                                           pAAD: aadp.baseAddress, ulAADLen: CK_ULONG(aadp.count), ulTagBits: 128)
                return withUnsafeMutableBytes(of: &params) { p in
                    var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_AES_GCM), pParameter: p.baseAddress,
                                                 ulParameterLen: CK_ULONG(p.count))
                    let initRV = encrypt ? f.C_EncryptInit(session, &mechanism, key) : f.C_DecryptInit(session, &mechanism, key)
                    guard initRV == CKR_OK else { return (initRV, CK_RV(CKR_OK)) }
                    let rv = input.withUnsafeMutableBufferPointer { inp in
                        encrypt ? f.C_Encrypt(session, inp.baseAddress, CK_ULONG(inp.count), &output, &outputLength)
                                : f.C_Decrypt(session, inp.baseAddress, CK_ULONG(inp.count), &output, &outputLength)
                    }
                    return (initRV, rv)
                }
            }
        }
        try check(name + "Init", initRV)
        try check(name, rv)
        let result = Array(output.prefix(Int(outputLength)))
        for i in output.indices { output[i] = 0 }
        return result
    }

    private static func attribute(_ type: UInt, _ buffer: UnsafeMutableRawBufferPointer) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: buffer.baseAddress, ulValueLen: CK_ULONG(buffer.count))
    }

    /// A blank-padded fixed-size PKCS#11 text field (a C array imported as a tuple) as a trimmed String.
    private static func padded<T>(_ field: T) -> String {
        let bytes = withUnsafeBytes(of: field) { Array($0) }
        var end = bytes.count
        while end > 0 && (bytes[end - 1] == 0x20 || bytes[end - 1] == 0) { end -= 1 }
        return String(decoding: bytes.prefix(end), as: UTF8.self)
    }
}
