// libFuzzer harness for the local-KEK envelope and the Decrypt path in front of it (scripts/fuzz envelope SECONDS):
// `Envelope.keyVersion`/`open`, `FileKeyBackend.decrypt` and `KMSService.decrypt` on arbitrary ciphertext, key_id,
// uid and annotations, against one fixed key set (a key file written once to a temp folder):
//   version 2 retired, version 3 active, version 4 primary (version 1 pruned).
//
// Input: one configuration octet, then fields separated by the marker FE FD FC:
//   ciphertext, key_id, uid, annotation key, annotation value, annotation key, annotation value, ...
// Configuration bit 0 ("tamper" mode): the harness seals field 0 itself through the backend (a genuine ciphertext),
// then XORs it with field 1 (octet pairs: position, mask) and appends field 2 to the key_id; Decrypt must return
// the plaintext exactly when nothing changed, and fail otherwise.
//
// Beyond "never crash": Decrypt returns plaintext only for a genuine ciphertext -- one that an independent AES-GCM open
// in this file (AAD rebuilt from the documented format) accepts under the named version's key, for a version that is
// in the file and not retired, with that version's key_id; and then it must succeed. Failures are INVALID_ARGUMENT or
// FAILED_PRECONDITION, never INTERNAL.
//
// `KEKD_FUZZ_WRITE_SEEDS=DIR .build-fuzz/envelope` writes seeds (real ciphertexts from Envelope.seal under this key
// set) to DIR and exits.
import Crypto
import Foundation
import KMS
import Logging
import KMSProto

let marker: [UInt8] = [0xFE, 0xFD, 0xFC]
let genuinePrefix = Array("kekd-fuzz-genuine-".utf8)
let fixedAnnotations = [FileKeyBackend.annotationKey: FileKeyBackend.annotationValue]

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("envelope fuzz invariant: \(message())") }
}

/// The key file: fixed bytes, so committed seeds stay genuine for every build.
struct Fixture {
    let fileID = Array(SHA256.hash(Array("kekd fuzz file id".utf8)).prefix(16))
    let keys: [UInt32: [UInt8]] = Dictionary(uniqueKeysWithValues: (2...4).map { (UInt32($0), SHA256.hash(Array("kekd fuzz key v\($0)".utf8))) })
    let states: [UInt32: KeyState] = [2: .retired, 3: .active, 4: .primary]
    let backend: FileKeyBackend
    let service: KMSService

    init() {
        do {
            var file = try KeyFile.parse([UInt8](repeating: 7, count: 32))  // a template: KeyFile has no public init
            file.fileID = fileID
            file.auditSecret = SHA256.hash(Array("kekd fuzz audit secret".utf8))
            let template = file.versions[0]
            file.versions = [2, 3, 4].map { (version: UInt32) in
                var v = template
                v.version = version
                v.state = [2: KeyState.retired, 3: .active, 4: .primary][version] ?? .active
                v.created = "2026-11-25T12:00:00Z"
                v.key = SHA256.hash(Array("kekd fuzz key v\(version)".utf8))
                return v
            }
            let folder = NSTemporaryDirectory() + "kekd-fuzz-envelope-\(getpid())"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let path = folder + "/keys.json"
            try KeyFileStore.create(path: path, file: file)
            backend = try FileKeyBackend(keyFilePath: path, pollInterval: nil, log: Logger { _ in })
            try? FileManager.default.removeItem(atPath: folder)
        } catch {
            fatalError("envelope fuzz: cannot build the key set: \(error)")
        }
        service = KMSService(backend: backend)
    }

    func keyID(_ version: UInt32) -> String { KeyFile.keyID(fileID: fileID, version: version) }
}

let fixture = Fixture()

func splitFields(_ bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
    Array(bytes).split(separator: marker, omittingEmptySubsequences: false)
}

func text(_ bytes: ArraySlice<UInt8>?) -> String { bytes.map { String(decoding: $0, as: UTF8.self) } ?? "" }

/// The AAD as Envelope.swift documents it, rebuilt here independently of `Envelope.additionalData`.
func referenceAAD(version: UInt32, keyID: String, annotations: [String: [UInt8]]) -> [UInt8] {
    func be32(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }
    var aad: [UInt8] = [1] + be32(Int(version)) + be32(keyID.utf8.count) + Array(keyID.utf8) + be32(annotations.count)
    for (key, value) in annotations.map({ (Array($0.key.utf8), $0.value) }).sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) {
        aad += be32(key.count) + key + be32(value.count) + value
    }
    return aad
}

/// The plaintext if this input is a genuine ciphertext for a usable version of the fixture, else nil.
func referenceOpen(ciphertext: [UInt8], keyID: String, annotations: [String: [UInt8]]) -> [UInt8]? {
    guard ciphertext.count >= 33, ciphertext[0] == 1 else { return nil }
    let version = ciphertext[1...4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    guard let key = fixture.keys[version], fixture.states[version] != .retired, keyID == fixture.keyID(version) else { return nil }
    return try? AES256GCM.open(key: key, nonce: Array(ciphertext[5..<17]), sealed: Array(ciphertext[17...]),
                               aad: referenceAAD(version: version, keyID: keyID, annotations: annotations))
}

func checkDecrypt(ciphertext: [UInt8], keyID: String, uid: String, annotations: [String: [UInt8]]) -> [UInt8]? {
    let request = DecryptRequest(ciphertext: ciphertext, uid: uid, keyID: keyID, annotations: annotations)
    let expected = referenceOpen(ciphertext: ciphertext, keyID: keyID, annotations: annotations)
    let requestIsValid = (try? validateKeyID(keyID)) != nil && (try? validateAnnotations(annotations)) != nil
        && uid.utf8.count <= KMSLimits.maxUIDBytes
    do {
        let plaintext = try fixture.service.decrypt(request).plaintext
        check(expected != nil, "Decrypt returned plaintext for a ciphertext the reference open rejects")
        check(plaintext == expected, "Decrypt returned different plaintext than the reference open")
        check(requestIsValid, "Decrypt accepted an invalid key_id/annotations/uid")
        return plaintext
    } catch {
        check(error.code == .invalidArgument || error.code == .failedPrecondition, "Decrypt failed with \(error.code): \(error.message)")
        check(expected == nil || !requestIsValid, "Decrypt rejected a genuine ciphertext: \(error.message)")
    }
    // The envelope on its own: no other key of the set opens a ciphertext naming one of its versions.
    if let version = try? Envelope.keyVersion(of: ciphertext), fixture.keys[version] != nil {
        for (v, key) in fixture.keys where v != version {
            let opened = try? Envelope.open(ciphertext: ciphertext, key: symmetricKey(key), keyID: keyID, annotations: annotations)
            check(opened == nil, "Envelope.open accepted key version \(v) for a ciphertext naming version \(version)")
        }
    }
    return nil
}

func symmetricKey(_ bytes: [UInt8]) -> SymmetricKey {
    guard let key = try? SymmetricKey(bytes: bytes) else { fatalError("fixture key") }
    return key
}

func annotationsFrom(_ fields: ArraySlice<ArraySlice<UInt8>>) -> [String: [UInt8]] {
    var annotations: [String: [UInt8]] = [:]
    var i = fields.startIndex
    while i < fields.endIndex {
        annotations[text(fields[i])] = i + 1 < fields.endIndex ? Array(fields[i + 1]) : []
        i += 2
    }
    return annotations
}

func tamper(_ fields: [ArraySlice<UInt8>]) {
    let plaintext = fields[0].isEmpty ? [0x78] : Array(fields[0].prefix(4096))
    let sealed: EncryptResult
    do { sealed = try fixture.backend.encrypt(plaintext: plaintext, uid: "") } catch {
        fatalError("envelope fuzz: encrypt failed: \(error)")
    }
    check(sealed.keyID == fixture.keyID(4), "Encrypt did not use the primary")
    var ciphertext = sealed.ciphertext
    let mask = fields.count > 1 ? Array(fields[1]) : []
    var k = 0
    while k + 1 < mask.count {
        ciphertext[Int(mask[k]) % ciphertext.count] ^= mask[k + 1]
        k += 2
    }
    let keyID = sealed.keyID + text(fields.count > 2 ? fields[2] : nil)
    let opened = checkDecrypt(ciphertext: ciphertext, keyID: keyID, uid: "", annotations: sealed.annotations)
    if ciphertext == sealed.ciphertext && keyID == sealed.keyID {
        check(opened == plaintext, "a genuine ciphertext did not decrypt to its plaintext")
    } else {
        check(opened == nil, "a tampered ciphertext or key_id decrypted")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEnvelope(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let fields = splitFields(input[1...])
    if input[0] & 1 != 0 {
        tamper(fields)
        return 0
    }
    let ciphertext = Array(fields[0])
    let keyID = text(fields.count > 1 ? fields[1] : nil)
    let uid = text(fields.count > 2 ? fields[2] : nil)
    let opened = checkDecrypt(ciphertext: ciphertext, keyID: keyID, uid: uid, annotations: annotationsFrom(fields.dropFirst(3)))
    if let opened { check(opened.starts(with: genuinePrefix), "Decrypt returned a plaintext no seed holds") }
    return 0
}

// MARK: Seeds

func seedInput(tamper: Bool = false, _ fields: [[UInt8]]) -> [UInt8] {
    var out: [UInt8] = [tamper ? 1 : 0]
    for (i, field) in fields.enumerated() { out += (i > 0 ? marker : []) + field }
    return out
}

func writeSeeds(to folder: String) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    func write(_ name: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: URL(fileURLWithPath: folder + "/" + name)) }
    let uid = Array("2c5a1a43-6b5e-4d8e-9e0f-2f1b7c9d0a11".utf8)
    func annotationFields(_ annotations: [String: [UInt8]]) -> [[UInt8]] {
        annotations.sorted { $0.key < $1.key }.flatMap { [Array($0.key.utf8), $0.value] }
    }
    for version: UInt32 in [2, 3, 4] {
        let plaintext = genuinePrefix + Array("dek-v\(version)-".utf8) + Array(repeating: UInt8(version), count: 14)
        let ciphertext = try Envelope.seal(plaintext: plaintext, key: symmetricKey(fixture.keys[version] ?? []),
                                           keyVersion: version, keyID: fixture.keyID(version), annotations: fixedAnnotations)
        let state = fixture.states[version]?.rawValue ?? "none"
        let opened = checkDecrypt(ciphertext: ciphertext, keyID: fixture.keyID(version), uid: "", annotations: fixedAnnotations)
        check((opened != nil) == (version != 2), "seed for version \(version) does not behave as its state says")
        try write("genuine-v\(version)-\(state)", seedInput([ciphertext, Array(fixture.keyID(version).utf8), uid] + annotationFields(fixedAnnotations)))
        try write("genuine-v\(version)-\(state)-wrong-key-id", seedInput([ciphertext, Array(fixture.keyID(version == 4 ? 3 : 4).utf8), uid] + annotationFields(fixedAnnotations)))
        try write("genuine-v\(version)-\(state)-no-annotations", seedInput([ciphertext, Array(fixture.keyID(version).utf8), uid]))
    }
    // Through the backend, as the apiserver's Encrypt does: primary, its key_id and annotation.
    let primary = try fixture.backend.encrypt(plaintext: genuinePrefix + Array(repeating: 0xA5, count: 14), uid: "")
    try write("encrypt-result-primary", seedInput([primary.ciphertext, Array(primary.keyID.utf8), uid] + annotationFields(primary.annotations)))
    let extra = ["local-kek.kekd.io": FileKeyBackend.annotationValue, "version.encryption.remote.io": Array("1".utf8)]
    let sealedExtra = try Envelope.seal(plaintext: genuinePrefix + Array("two-annotations".utf8), key: symmetricKey(fixture.keys[3] ?? []),
                                        keyVersion: 3, keyID: fixture.keyID(3), annotations: extra)
    try write("genuine-v3-two-annotations", seedInput([sealedExtra, Array(fixture.keyID(3).utf8), uid] + annotationFields(extra)))
    // Versions not in the file: pruned (1) and newer than the file (9).
    for version: UInt32 in [1, 9] {
        let ciphertext = try Envelope.seal(plaintext: genuinePrefix + [1, 2, 3], key: symmetricKey(SHA256.hash(Array("kekd fuzz key v\(version)".utf8))),
                                           keyVersion: version, keyID: fixture.keyID(version), annotations: fixedAnnotations)
        try write("absent-v\(version)", seedInput([ciphertext, Array(fixture.keyID(version).utf8), uid] + annotationFields(fixedAnnotations)))
    }
    try write("truncated-header", seedInput([[1, 0, 0, 0, 4, 9, 9], Array(fixture.keyID(4).utf8), uid]))
    try write("unknown-format", seedInput([[2] + Array(repeating: 0, count: 40), Array(fixture.keyID(4).utf8), uid]))
    try write("tamper-none-32-byte-dek", seedInput(tamper: true, [Array(repeating: 0x42, count: 32)]))
    try write("tamper-flip-tag", seedInput(tamper: true, [Array(repeating: 0x42, count: 32), [64, 0x01]]))
    try write("tamper-flip-version", seedInput(tamper: true, [Array(repeating: 0x42, count: 32), [4, 0x07]]))
    try write("tamper-key-id-suffix", seedInput(tamper: true, [Array(repeating: 0x42, count: 32), [], Array("x".utf8)]))
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    _ = fixture.backend
    if let folder = getenv("KEKD_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) {
        do { try writeSeeds(to: folder) } catch { fatalError("envelope fuzz: writing seeds: \(error)") }
        _exit(0)  // not exit(): LeakSanitizer would report Foundation's process-lifetime caches
    }
    return 0
}
