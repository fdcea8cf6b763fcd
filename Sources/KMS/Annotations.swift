// Checks the apiserver applies to key_ids and annotations (kmsv2/envelope.go), applied to what we receive and to
// what we return, so we never hand the apiserver something it would reject.

public enum KMSLimits {
    /// key_id, Status and Encrypt: non-empty, at most 1 KiB (`KeyIDMaxSize`).
    public static let maxKeyIDBytes = 1024
    /// The apiserver rejects an Encrypt ciphertext over 1 KiB (`encryptedDEKSourceMaxSize`).
    public static let maxDEKCiphertextBytes = 1024
    /// Sum of len(key)+len(value) over all annotations (`annotationsMaxSize`).
    public static let maxAnnotationBytes = 32 * 1024
    /// Our plaintext bound for Encrypt: the default gRPC receive limit. The apiserver sends 32 bytes.
    public static let maxPlaintextBytes = 4 * 1024 * 1024
    /// Our ciphertext bound for Decrypt: a sealed maximal plaintext.
    public static let maxCiphertextBytes = maxPlaintextBytes + Envelope.overhead
    /// A uid is a UUID from the apiserver; anything far longer is not from a well-behaved client.
    public static let maxUIDBytes = 1024
}

/// Validates a key_id as the apiserver does (`ValidateKeyID`).
public func validateKeyID(_ keyID: String) throws(KMSError) {
    if keyID.isEmpty { throw KMSError(.invalidArgument, "key_id is empty") }
    let n = keyID.utf8.count
    if n > KMSLimits.maxKeyIDBytes { throw KMSError(.invalidArgument, "key_id is \(n) bytes, the limit is \(KMSLimits.maxKeyIDBytes)") }
}

/// Validates annotations as the apiserver does (`validateAnnotations`): every key a fully qualified domain name and
/// the total size of keys and values within 32 KiB.
public func validateAnnotations(_ annotations: [String: [UInt8]]) throws(KMSError) {
    var total = 0
    for (key, value) in annotations {
        guard isFullyQualifiedDomainName(key) else {
            throw KMSError(.invalidArgument, "annotation key \"\(String(key.prefix(64)))\" is not a fully qualified domain name")
        }
        total += key.utf8.count + value.count
    }
    if total > KMSLimits.maxAnnotationBytes {
        throw KMSError(.invalidArgument, "annotations are \(total) bytes, the limit is \(KMSLimits.maxAnnotationBytes)")
    }
}

/// apimachinery `IsFullyQualifiedDomainName`: an optional trailing dot removed, a lowercase RFC 1123 subdomain of at
/// most 253 characters, with at least two labels of 1...63 characters `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
public func isFullyQualifiedDomainName(_ name: String) -> Bool {
    var name = name
    return name.withUTF8 { bytes in
        // One pass over the bytes (this runs for every Decrypt): label lengths, characters and edges.
        let dot = UInt8(ascii: "."), hyphen = UInt8(ascii: "-")
        var end = bytes.count
        if end > 0 && bytes[end - 1] == dot { end -= 1 }
        guard end > 0, end <= 253 else { return false }
        var labels = 0
        var labelStart = 0
        for i in 0...end {
            if i == end || bytes[i] == dot {
                guard (1...63).contains(i - labelStart), bytes[labelStart] != hyphen, bytes[i - 1] != hyphen else { return false }
                labels += 1
                labelStart = i + 1
            } else {
                let c = bytes[i]
                guard (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                        || c == hyphen else { return false }
            }
        }
        return labels >= 2
    }
}
