// Thin, boring wrappers over OpenSSL EVP. Every function here is small on purpose: this is the code to review twice.
import COpenSSL
import Locking

public enum CryptoError: Error, Equatable, CustomStringConvertible {
    /// An OpenSSL call failed; the string names the call (never any key material).
    case openSSL(String)
    case invalidKeySize(Int)
    case invalidNonceSize(Int)
    /// AES-GCM tag check failed: wrong key, wrong AAD, or tampered bytes.
    case authenticationFailed

    public var description: String {
        switch self {
        case .openSSL(let call): return "OpenSSL \(call) failed"
        case .invalidKeySize(let n): return "key must be 32 bytes, got \(n)"
        case .invalidNonceSize(let n): return "nonce must be 12 bytes, got \(n)"
        case .authenticationFailed: return "authentication failed"
        }
    }
}

/// The operating system's random source through OpenSSL's DRBG.
public enum SecureRandom {
    public static func bytes(_ count: Int) throws(CryptoError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        if count == 0 { return out }
        let ok = out.withUnsafeMutableBytes { RAND_bytes($0.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(count)) }
        guard ok == 1 else { throw .openSSL("RAND_bytes") }
        return out
    }
}

/// Random 96-bit GCM nonces, drawn from OpenSSL's DRBG 4 KiB at a time. A nonce is public (it travels in the
/// ciphertext) and only has to be unpredictable and never repeat; a call into the DRBG (its lock, a CTR-DRBG update
/// through the EVP layer) cost a sixth of a 32-byte Encrypt, so it is made once per 341 nonces. Each byte is handed
/// out once and zeroed. kekd and kekctl never fork without exec, so no child process can hand out the same bytes.
public enum NonceSource {
    static let poolSize = 4096
    private static let pool = LockedValue(Pool())
    private struct Pool {
        var bytes = [UInt8](repeating: 0, count: NonceSource.poolSize)
        var next = NonceSource.poolSize
    }

    /// Fills `destination` (at most `poolSize` bytes) with bytes no other call gets.
    public static func fill(_ destination: UnsafeMutableBufferPointer<UInt8>) throws(CryptoError) {
        precondition(destination.count <= poolSize, "a nonce larger than the pool")
        guard let target = destination.baseAddress else { return }
        try pool.withLock { (pool: inout Pool) throws(CryptoError) in
            if pool.next + destination.count > poolSize {
                let ok = pool.bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress!, Int32(poolSize)) }
                guard ok == 1 else { throw .openSSL("RAND_bytes") }
                pool.next = 0
            }
            let start = pool.next
            pool.bytes.withUnsafeMutableBufferPointer { bytes in
                target.update(from: bytes.baseAddress! + start, count: destination.count)
                (bytes.baseAddress! + start).update(repeating: 0, count: destination.count)
            }
            pool.next += destination.count
        }
    }
}

/// Algorithms fetched from the provider once: the legacy getters (`EVP_aes_256_gcm()`, `EVP_sha256()`) make OpenSSL 3
/// look the algorithm up again on every init, a measurable share of a 32-byte Decrypt. Fetched on first use, which
/// comes after `FIPSMode.enable()` (kekd enables it before touching any key), so the FIPS provider's are used then.
enum FetchedAlgorithms {
    nonisolated(unsafe) static let aes256GCM: OpaquePointer = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil) ?? EVP_aes_256_gcm()
    nonisolated(unsafe) static let sha256: OpaquePointer = EVP_MD_fetch(nil, "SHA256", nil) ?? EVP_sha256()
}

/// AES-256-GCM with 96-bit nonces and 128-bit tags.
public enum AES256GCM {
    public static let keySize = 32
    public static let nonceSize = 12
    public static let tagSize = 16

    /// Returns ciphertext || tag.
    public static func seal(key: [UInt8], nonce: [UInt8], plaintext: [UInt8], aad: [UInt8]) throws(CryptoError) -> [UInt8] {
        var out: [UInt8] = []
        try seal(key: key, nonce: nonce[...], plaintext: plaintext, aad: aad, appendingTo: &out)
        return out
    }

    /// Appends ciphertext || tag to `out` (so a caller can put its header in front without another copy).
    public static func seal(key: [UInt8], nonce: ArraySlice<UInt8>, plaintext: [UInt8], aad: [UInt8],
                            appendingTo out: inout [UInt8]) throws(CryptoError) {
        guard key.count == keySize else { throw .invalidKeySize(key.count) }
        let ctx = try keyedContext(key)
        defer { EVP_CIPHER_CTX_free(ctx) }
        try seal(keyed: ctx, nonce: nonce, plaintext: plaintext, aad: aad, appendingTo: &out)
    }

    /// The same under a `SymmetricKey`, on one of its already keyed contexts (no key set-up per call).
    public static func seal(key: SymmetricKey, nonce: ArraySlice<UInt8>, plaintext: [UInt8], aad: [UInt8],
                            appendingTo out: inout [UInt8]) throws(CryptoError) {
        try key.withGCMContext { ctx throws(CryptoError) in
            try seal(keyed: ctx, nonce: nonce, plaintext: plaintext, aad: aad, appendingTo: &out)
        }
    }

    /// A new context holding `key`'s schedule; each seal or open then only sets its nonce.
    static func keyedContext(_ key: [UInt8]) throws(CryptoError) -> OpaquePointer {
        guard let ctx = EVP_CIPHER_CTX_new() else { throw .openSSL("EVP_CIPHER_CTX_new") }
        guard EVP_CipherInit_ex2(ctx, FetchedAlgorithms.aes256GCM, key, nil, 1, nil) == 1 else {
            EVP_CIPHER_CTX_free(ctx)
            throw .openSSL("EVP_CipherInit_ex2(key)")
        }
        return ctx
    }

    /// `header` || nonce || ciphertext || tag in one new array (the envelopes' layout): `writeHeader` fills the first
    /// `headerSize` bytes, the nonce comes from `NonceSource`, and the seal runs on one of `key`'s keyed contexts.
    public static func sealWithRandomNonce(key: SymmetricKey, headerSize: Int, plaintext: [UInt8], aad: [UInt8],
                                           writeHeader: (UnsafeMutableBufferPointer<UInt8>) -> Void) throws(CryptoError) -> [UInt8] {
        try newArray(count: headerSize + nonceSize + plaintext.count + tagSize) { (base) throws(CryptoError) in
            writeHeader(UnsafeMutableBufferPointer(start: base, count: headerSize))
            let nonce = UnsafeMutableBufferPointer(start: base + headerSize, count: nonceSize)
            try NonceSource.fill(nonce)
            try key.withGCMContext { ctx throws(CryptoError) in
                try seal(keyed: ctx, nonce: UnsafePointer(nonce.baseAddress!), plaintext: plaintext, aad: aad,
                         into: base + headerSize + nonceSize)
            }
        }
    }

    private static func seal(keyed ctx: OpaquePointer, nonce: ArraySlice<UInt8>, plaintext: [UInt8], aad: [UInt8],
                             appendingTo out: inout [UInt8]) throws(CryptoError) {
        guard nonce.count == nonceSize else { throw .invalidNonceSize(nonce.count) }
        let sealed = try newArray(count: plaintext.count + tagSize) { (destination) throws(CryptoError) in
            try nonce.withUnsafeBufferPointer { nonce throws(CryptoError) in
                try seal(keyed: ctx, nonce: nonce.baseAddress!, plaintext: plaintext, aad: aad, into: destination)
            }
        }
        if out.isEmpty { out = sealed } else { out.append(contentsOf: sealed) }
    }

    /// An array of `count` bytes that `fill` writes in full, or `fill`'s error. A small one (a DEK seed, its
    /// envelope) is filled in a temporary on the stack, copied out once and the temporary wiped (it may hold
    /// plaintext): allocating the array first goes through the standard library's generic allocation entry point,
    /// which looks the storage type up at run time on every call (several hundred instructions).
    /// A larger one is filled in place: a large temporary would grow the thread's resident stack for good.
    private static func newArray(count: Int, _ fill: (UnsafeMutablePointer<UInt8>) throws(CryptoError) -> Void) throws(CryptoError) -> [UInt8] {
        guard count <= 512 else {
            var failure: CryptoError?
            let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                do throws(CryptoError) {
                    try fill(buffer.baseAddress!)
                    initialized = count
                } catch {
                    failure = error
                    OPENSSL_cleanse(buffer.baseAddress, count)
                    initialized = 0
                }
            }
            if let failure { throw failure }
            return bytes
        }
        return try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(count, 1)) { (temporary) throws(CryptoError) -> [UInt8] in
            defer { OPENSSL_cleanse(temporary.baseAddress, temporary.count) }
            try fill(temporary.baseAddress!)
            return Array(UnsafeBufferPointer(rebasing: temporary[..<count]))
        }
    }

    /// Writes ciphertext || tag (plaintext.count + tagSize bytes) to `destination`.
    private static func seal(keyed ctx: OpaquePointer, nonce: UnsafePointer<UInt8>, plaintext: [UInt8], aad: [UInt8],
                             into destination: UnsafeMutablePointer<UInt8>) throws(CryptoError) {
        var len: Int32 = 0
        // No cipher and no key: the context keeps both and restarts under this nonce.
        guard EVP_CipherInit_ex2(ctx, nil, nil, nonce, 1, nil) == 1 else { throw .openSSL("EVP_CipherInit_ex2(encrypt)") }
        if !aad.isEmpty {
            guard EVP_EncryptUpdate(ctx, nil, &len, aad, Int32(aad.count)) == 1 else { throw .openSSL("EVP_EncryptUpdate(aad)") }
        }
        var written = 0
        if !plaintext.isEmpty {
            guard EVP_EncryptUpdate(ctx, destination, &len, plaintext, Int32(plaintext.count)) == 1 else { throw .openSSL("EVP_Encrypt") }
            written = Int(len)
        }
        guard EVP_EncryptFinal_ex(ctx, destination + written, &len) == 1 else { throw .openSSL("EVP_Encrypt") }
        written += Int(len)
        guard written == plaintext.count,
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(tagSize), destination + written) == 1
        else { throw .openSSL("EVP_Encrypt") }
    }

    /// Opens ciphertext || tag; throws `.authenticationFailed` on any mismatch.
    public static func open(key: [UInt8], nonce: [UInt8], sealed: [UInt8], aad: [UInt8]) throws(CryptoError) -> [UInt8] {
        try open(key: key, nonce: nonce[...], sealed: sealed[...], aad: aad)
    }

    /// The same on slices of a caller's buffer (the envelope's nonce and body), without copying them out.
    public static func open(key: [UInt8], nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, aad: [UInt8]) throws(CryptoError) -> [UInt8] {
        guard key.count == keySize else { throw .invalidKeySize(key.count) }
        let ctx = try keyedContext(key)
        defer { EVP_CIPHER_CTX_free(ctx) }
        return try open(keyed: ctx, nonce: nonce, sealed: sealed, aad: aad)
    }

    /// The same under a `SymmetricKey`, on one of its already keyed contexts (no key set-up per call).
    public static func open(key: SymmetricKey, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, aad: [UInt8]) throws(CryptoError) -> [UInt8] {
        try key.withGCMContext { ctx throws(CryptoError) in try open(keyed: ctx, nonce: nonce, sealed: sealed, aad: aad) }
    }

    private static func open(keyed ctx: OpaquePointer, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, aad: [UInt8]) throws(CryptoError) -> [UInt8] {
        guard nonce.count == nonceSize else { throw .invalidNonceSize(nonce.count) }
        guard sealed.count >= tagSize else { throw .authenticationFailed }
        let bodyCount = sealed.count - tagSize
        var len: Int32 = 0
        let initialised = nonce.withUnsafeBufferPointer { EVP_CipherInit_ex2(ctx, nil, nil, $0.baseAddress, 0, nil) }
        guard initialised == 1 else { throw .openSSL("EVP_CipherInit_ex2(decrypt)") }
        if !aad.isEmpty {
            guard EVP_DecryptUpdate(ctx, nil, &len, aad, Int32(aad.count)) == 1 else { throw .openSSL("EVP_DecryptUpdate(aad)") }
        }
        return try newArray(count: bodyCount) { (out) throws(CryptoError) in
            let ok: Bool = sealed.withUnsafeBufferPointer { input in
                var written = 0
                if bodyCount > 0 {
                    guard EVP_DecryptUpdate(ctx, out, &len, input.baseAddress!, Int32(bodyCount)) == 1 else { return false }
                    written = Int(len)
                }
                // OpenSSL copies the tag; it does not write through this pointer.
                let tag = UnsafeMutableRawPointer(mutating: input.baseAddress! + bodyCount)
                guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, Int32(tagSize), tag) == 1 else { return false }
                return EVP_DecryptFinal_ex(ctx, out + written, &len) == 1
            }
            // What was decrypted before the tag check failed is wiped by newArray, whichever buffer held it.
            guard ok else { throw .authenticationFailed }
        }
    }
}

public enum SHA256 {
    public static let size = 32
    public static func hash(_ data: [UInt8]) -> [UInt8] {
        var md = [UInt8](repeating: 0, count: size)
        var mdLen: UInt32 = 0
        let ok = data.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &md, &mdLen, FetchedAlgorithms.sha256, nil) }
        precondition(ok == 1 && mdLen == 32, "EVP_Digest(SHA-256) cannot fail on valid input")
        return md
    }
}

/// Whether digests should go through EVP: in FIPS mode, so each comes from the FIPS provider. Otherwise the two
/// contexts below use OpenSSL's SHA256_* functions on a plain struct (a state copies without an allocation, and a
/// digest costs half of EVP's, which copies a provider context through the allocator and looks parameters up by name).
private func digestsNeedEVP() -> Bool { EVP_default_properties_is_fips_enabled(nil) == 1 }

/// SHA-256 with one digest context kept for many digests (the audit writer hashes a ciphertext per record): no
/// context allocated, set up and freed each time. Not thread-safe: one owner.
public final class SHA256Context {
    private let evp: OpaquePointer?

    public convenience init() { self.init(throughEVP: digestsNeedEVP()) }

    init(throughEVP: Bool) { evp = throughEVP ? EVP_MD_CTX_new() : nil }

    deinit { EVP_MD_CTX_free(evp) }

    public func hash(_ data: [UInt8]) -> [UInt8] {
        var md = [UInt8](repeating: 0, count: SHA256.size)
        md.withUnsafeMutableBufferPointer { hash(data, into: $0.baseAddress!) }
        return md
    }

    /// Writes the digest (`SHA256.size` bytes) to `digest`: no array for a caller that keeps only part of it.
    public func hash(_ data: [UInt8], into digest: UnsafeMutablePointer<UInt8>) {
        guard let evp else {
            var ctx = SHA256_CTX()
            SHA256_Init(&ctx)
            data.withUnsafeBufferPointer { _ = SHA256_Update(&ctx, $0.baseAddress, $0.count) }
            SHA256_Final(digest, &ctx)
            return
        }
        var mdLen: UInt32 = 0
        let ok = EVP_DigestInit_ex2(evp, FetchedAlgorithms.sha256, nil) == 1
            && data.withUnsafeBytes { EVP_DigestUpdate(evp, $0.baseAddress, $0.count) } == 1
            && EVP_DigestFinal_ex(evp, digest, &mdLen) == 1
        precondition(ok && mdLen == 32, "SHA-256 cannot fail on valid input")
    }
}

public enum HMACSHA256 {
    public static func mac(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var outLen = 0
        let result = key.withUnsafeBytes { k in
            message.withUnsafeBytes { m in
                EVP_Q_mac(nil, "HMAC", nil, "SHA256", nil, k.baseAddress, k.count, m.baseAddress, m.count, &out, 32, &outLen)
            }
        }
        precondition(result != nil && outLen == 32, "HMAC-SHA256 cannot fail on valid input")
        return out
    }
}

/// An HMAC-SHA256 key set up once for many MACs (the audit chain: one per record), each over several parts without
/// joining them first. Not thread-safe: one owner (the audit writer thread).
/// HMAC as RFC 2104 defines it, H((K ^ opad) || H((K ^ ipad) || m)), with the SHA-256 states after the two pad blocks
/// kept: each MAC copies them instead of re-keying (EVP_MAC re-derives both on every init, a third of a record's MAC).
public final class HMACSHA256Context {
    /// The states after the pad blocks, outside FIPS mode.
    private var plainInner = SHA256_CTX()
    private var plainOuter = SHA256_CTX()
    /// The same as EVP contexts, in FIPS mode.
    private let evp: (inner: OpaquePointer, outer: OpaquePointer, work: OpaquePointer)?

    public convenience init(key: [UInt8]) { self.init(key: key, throughEVP: digestsNeedEVP()) }

    init(key: [UInt8], throughEVP: Bool) {
        let blockSize = 64
        var block = key.count > blockSize ? SHA256.hash(key) : key
        block.append(contentsOf: repeatElement(0, count: blockSize - block.count))
        defer { wipe(&block) }
        /// Runs `body` on the key block XORed with `pad`, wiped afterwards.
        func withPadBlock(_ pad: UInt8, _ body: ([UInt8]) -> Void) {
            var padBlock = block.map { $0 ^ pad }
            defer { wipe(&padBlock) }
            body(padBlock)
        }
        guard throughEVP else {
            evp = nil
            withPadBlock(0x36) { SHA256_Init(&plainInner); SHA256_Update(&plainInner, $0, blockSize) }
            withPadBlock(0x5C) { SHA256_Init(&plainOuter); SHA256_Update(&plainOuter, $0, blockSize) }
            return
        }
        func padded(_ pad: UInt8) -> OpaquePointer {
            guard let ctx = EVP_MD_CTX_new(), EVP_DigestInit_ex2(ctx, FetchedAlgorithms.sha256, nil) == 1 else {
                preconditionFailure("SHA-256 cannot fail on valid input")
            }
            withPadBlock(pad) { precondition(EVP_DigestUpdate(ctx, $0, blockSize) == 1, "SHA-256 cannot fail on valid input") }
            return ctx
        }
        guard let work = EVP_MD_CTX_new() else { preconditionFailure("out of memory") }
        evp = (padded(0x36), padded(0x5C), work)
    }

    deinit {
        cleanse(&plainInner)
        cleanse(&plainOuter)
        if let evp {
            EVP_MD_CTX_free(evp.inner)
            EVP_MD_CTX_free(evp.outer)
            EVP_MD_CTX_free(evp.work)
        }
    }

    /// HMAC-SHA256(key, first || second || third). Fixed parts, not a variadic list: a variadic list is an array of
    /// slices allocated on every call, its element type looked up at run time (~400 instructions per audit record).
    public func mac(_ first: ArraySlice<UInt8>, _ second: ArraySlice<UInt8> = [], _ third: ArraySlice<UInt8> = []) -> [UInt8] {
        // Computed on the stack and copied out once: `[UInt8](repeating:count:)` looked up its storage type at run
        // time on every call, as costly as the variadic list was.
        var digest: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &digest) { raw in
            let out = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            mac(first, second, third, into: out)
            return Array(UnsafeBufferPointer(start: out, count: SHA256.size))
        }
    }

    private func mac(_ first: ArraySlice<UInt8>, _ second: ArraySlice<UInt8>, _ third: ArraySlice<UInt8>,
                     into out: UnsafeMutablePointer<UInt8>) {
        guard let evp else {
            var ctx = plainInner
            func update(_ part: ArraySlice<UInt8>) {
                if !part.isEmpty { part.withUnsafeBufferPointer { _ = SHA256_Update(&ctx, $0.baseAddress, $0.count) } }
            }
            update(first)
            update(second)
            update(third)
            SHA256_Final(out, &ctx)
            ctx = plainOuter
            SHA256_Update(&ctx, out, SHA256.size)
            SHA256_Final(out, &ctx)
            cleanse(&ctx)
            return
        }
        var outLen: UInt32 = 0
        var ok = EVP_MD_CTX_copy_ex(evp.work, evp.inner) == 1
        func update(_ part: ArraySlice<UInt8>) {
            if ok && !part.isEmpty { ok = part.withUnsafeBufferPointer { EVP_DigestUpdate(evp.work, $0.baseAddress, $0.count) } == 1 }
        }
        update(first)
        update(second)
        update(third)
        ok = ok && EVP_DigestFinal_ex(evp.work, out, &outLen) == 1
            && EVP_MD_CTX_copy_ex(evp.work, evp.outer) == 1
            && EVP_DigestUpdate(evp.work, out, SHA256.size) == 1
            && EVP_DigestFinal_ex(evp.work, out, &outLen) == 1
        precondition(ok && outLen == 32, "HMAC-SHA256 cannot fail on valid input")
    }
}

/// Zeroes a SHA-256 state that held keyed data.
private func cleanse(_ ctx: inout SHA256_CTX) {
    withUnsafeMutableBytes(of: &ctx) { OPENSSL_cleanse($0.baseAddress, $0.count) }
}

/// HKDF-SHA256 (RFC 5869), extract-then-expand.
public enum HKDFSHA256 {
    public static func derive(inputKey: [UInt8], salt: [UInt8], info: [UInt8], length: Int) throws(CryptoError) -> [UInt8] {
        guard let ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nil) else { throw .openSSL("EVP_PKEY_CTX_new_id(HKDF)") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_derive_init(ctx) == 1,
              EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) == 1,
              EVP_PKEY_CTX_set1_hkdf_salt(ctx, salt, Int32(salt.count)) == 1,
              EVP_PKEY_CTX_set1_hkdf_key(ctx, inputKey, Int32(inputKey.count)) == 1,
              EVP_PKEY_CTX_add1_hkdf_info(ctx, info, Int32(info.count)) == 1
        else { throw .openSSL("HKDF setup") }
        var out = [UInt8](repeating: 0, count: length)
        var outLen = length
        guard EVP_PKEY_derive(ctx, &out, &outLen) == 1, outLen == length else { throw .openSSL("EVP_PKEY_derive") }
        return out
    }
}

/// PBKDF2-HMAC-SHA256 (RFC 8018): deliberately slow, so a value derived from a possibly weak secret costs a
/// guesser `iterations` HMACs per guess. Available in OpenSSL's FIPS provider.
public enum PBKDF2SHA256 {
    public static func derive(password: [UInt8], salt: [UInt8], iterations: Int, length: Int) throws(CryptoError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        let ok = password.withUnsafeBytes { p in
            PKCS5_PBKDF2_HMAC(p.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(password.count), salt, Int32(salt.count),
                              Int32(iterations), EVP_sha256(), Int32(length), &out)
        }
        guard ok == 1 else { throw .openSSL("PKCS5_PBKDF2_HMAC") }
        return out
    }
}

/// Key files must hold random bytes; text (printable ASCII and whitespace only) is a passphrase or a typo, whose
/// guessable bytes must never become a key. Shared by the key file's first format and the audit key file.
public func isPrintableText(_ bytes: some Collection<UInt8>) -> Bool {
    bytes.allSatisfy { ($0 >= 0x20 && $0 < 0x7F) || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
}

/// Compares two byte strings in time that depends only on their lengths.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    if a.isEmpty { return true }
    return a.withUnsafeBytes { x in b.withUnsafeBytes { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, a.count) == 0 } }
}

/// Overwrites the buffer with zeros in a way the optimiser will not remove.
public func wipe(_ bytes: inout [UInt8]) {
    let n = bytes.count
    if n == 0 { return }
    bytes.withUnsafeMutableBytes { OPENSSL_cleanse($0.baseAddress, n) }
}

/// Lowercase hex, for non-secret values (digests, ids).
public func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xf)]) }
    return String(decoding: out, as: UTF8.self)
}

/// A 256-bit key held in a reference type so it is wiped exactly once, when the last reference goes.
public final class SymmetricKey: @unchecked Sendable {
    // Immutable after init; only deinit writes to it.
    public private(set) var bytes: [UInt8]
    public init(bytes: [UInt8]) throws(CryptoError) {
        guard bytes.count == AES256GCM.keySize else { throw .invalidKeySize(bytes.count) }
        self.bytes = bytes
    }
    public static func random() throws(CryptoError) -> SymmetricKey { try SymmetricKey(bytes: SecureRandom.bytes(AES256GCM.keySize)) }

    /// AES-256-GCM contexts already keyed with `bytes`, for reuse: allocating and keying a context (key expansion,
    /// GHASH tables) cost as much as sealing or opening a 32-byte DEK. A context is taken out of the list for one call,
    /// so one thread at a time uses it; at most `maxIdleContexts` wait here (one per thread that used the key at once).
    private let idleGCMContexts = LockedValue<[IdleContext]>([])
    private static let maxIdleContexts = 64
    /// An idle context; only the thread that takes one out of the list touches it.
    private struct IdleContext: @unchecked Sendable { let ctx: OpaquePointer }

    func withGCMContext<R>(_ body: (OpaquePointer) throws(CryptoError) -> R) throws(CryptoError) -> R {
        let ctx: OpaquePointer
        if let idle = idleGCMContexts.withLock({ $0.popLast() }) { ctx = idle.ctx } else { ctx = try AES256GCM.keyedContext(bytes) }
        let result: R
        do { result = try body(ctx) } catch {
            EVP_CIPHER_CTX_free(ctx)  // not reused after a failure: whatever state OpenSSL left goes with it
            throw error
        }
        let kept = IdleContext(ctx: ctx)
        let surplus: Bool = idleGCMContexts.withLock { idle in
            guard idle.count < Self.maxIdleContexts else { return true }
            idle.append(kept)
            return false
        }
        if surplus { EVP_CIPHER_CTX_free(ctx) }
        return result
    }

    deinit {
        // EVP_CIPHER_CTX_free cleanses the key schedule each context holds.
        idleGCMContexts.withLock { idle in for entry in idle { EVP_CIPHER_CTX_free(entry.ctx) } }
        wipe(&bytes)
    }
}

/// OpenSSL's FIPS provider: loads it and makes it the default for all fetches, or reports why not.
public enum FIPSMode {
    public static func enable() throws(CryptoError) {
        guard OSSL_PROVIDER_load(nil, "fips") != nil else { throw .openSSL("OSSL_PROVIDER_load(fips)") }
        guard EVP_default_properties_enable_fips(nil, 1) == 1 else { throw .openSSL("EVP_default_properties_enable_fips") }
    }
}
