// libFuzzer harness for the key file parser (scripts/fuzz keyfile SECONDS): `KeyFile.parse` on arbitrary bytes, both
// formats (JSON with checksum, and the first format: 32 raw bytes or 44 base64 characters).
//
// Input: one configuration octet, then the file's bytes.
// Configuration bit 0 ("fix checksum"): before parsing, the harness replaces the 64 hex digits after the first
// "sha256:" with the checksum of what the JSON decodes to, so mutations get past the checksum into the field rules
// (`validate`). Without it, nearly every mutation of a JSON file stops at the checksum.
//
// Beyond "never crash": a parsed file passes `validate()`, has exactly one primary, distinct key_ids, and its
// `serialized()` bytes parse back to an equal file that serialises identically; a first-format key only comes from
// input of that shape.
import Crypto
import Foundation
import KMS

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("keyfile fuzz invariant: \(message())") }
}

/// Mirrors the JSON layout documented in KeyFile.swift (the parser's own types are private).
struct StoredFile: Decodable {
    var file_id: String
    var audit_secret: String
    var versions: [StoredVersion]
}
struct StoredVersion: Decodable {
    var version: UInt32
    var state: String
    var created: String
    var key: String
}

/// Hex to bytes; laxer than the parser (which takes lowercase only), harmless here: parse rejects what differs.
func hexBytes(_ text: String) -> [UInt8]? {
    let digits = Array(text.utf8)
    guard digits.count % 2 == 0 else { return nil }
    let bytes = stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0...($0 + 1)], as: UTF8.self), radix: 16) }
    return bytes.contains(nil) ? nil : bytes.compactMap { $0 }
}

/// A KeyFile to fill in: the type has no public initialiser, but parsing a first-format key gives one whose fields
/// are all settable.
let template: KeyFile? = try? KeyFile.parse([UInt8](repeating: 0x5A, count: 32))

/// The checksum `parse` expects for what `bytes` decodes to, computed through `serialized()` of an equal KeyFile.
func expectedChecksumHex(_ bytes: [UInt8]) -> [UInt8]? {
    guard var file = template, let stored = try? JSONDecoder().decode(StoredFile.self, from: Data(bytes)),
          let fileID = hexBytes(stored.file_id), let audit = Data(base64Encoded: stored.audit_secret) else { return nil }
    file.fileID = fileID
    file.auditSecret = [UInt8](audit)
    var versions: [KeyVersion] = []
    for v in stored.versions {
        guard var version = template?.versions.first, let state = KeyState(rawValue: v.state),
              let key = Data(base64Encoded: v.key) else { return nil }
        version.version = v.version
        version.state = state
        version.created = v.created
        version.key = [UInt8](key)
        versions.append(version)
    }
    file.versions = versions
    let serialized = file.serialized()
    let tag = Array("\"checksum\": \"sha256:".utf8)
    guard let start = serialized.firstRange(of: tag)?.upperBound, start + 64 <= serialized.count else { return nil }
    return Array(serialized[start..<(start + 64)])
}

func fixChecksum(_ bytes: [UInt8]) -> [UInt8] {
    guard let tag = bytes.firstRange(of: Array("sha256:".utf8)), tag.upperBound + 64 <= bytes.count,
          let hex = expectedChecksumHex(bytes) else { return bytes }
    var fixed = bytes
    fixed.replaceSubrange(tag.upperBound..<(tag.upperBound + 64), with: hex)
    return fixed
}

func isFirstFormatShape(_ bytes: [UInt8]) -> Bool {
    var trimmed = bytes
    if trimmed.last == 0x0A { trimmed.removeLast() }
    if trimmed.last == 0x0D { trimmed.removeLast() }
    return bytes.count == 32 || trimmed.count == 44
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzKeyFile(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    var bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    if data[0] & 1 != 0 { bytes = fixChecksum(bytes) }
    let file: KeyFile
    do {
        file = try KeyFile.parse(bytes)
    } catch {
        check(error.code == .failedPrecondition, "parse failed with \(error.code): \(error.message)")
        return 0
    }
    check(!file.isLegacyFormat || isFirstFormatShape(bytes), "a first-format key from \(bytes.count) bytes of another shape")
    do { try file.validate() } catch { check(false, "a parsed file fails validate(): \(error.message)") }
    check(file.versions.filter { $0.state == .primary }.count == 1, "not exactly one primary")
    check(Set(file.versions.map { file.keyID(forVersion: $0.version) }).count == file.versions.count, "key_ids repeat")
    check((try? file.auditHMACKey())?.count == 32, "no audit HMAC key")
    let serialized = file.serialized()
    do {
        let again = try KeyFile.parse(serialized)
        check(again == file, "serialized() parses to a different file")
        check(!again.isLegacyFormat, "serialized() is read as the first format")
        check(again.serialized() == serialized, "serialization is not stable")
    } catch {
        check(false, "serialized() does not parse: \(error.message)")
    }
    return 0
}
