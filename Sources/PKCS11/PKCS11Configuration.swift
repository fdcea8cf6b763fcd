// `--pkcs11-*` flags, shared by kekd and kekctl, validated before anything touches the module.

public struct PKCS11Configuration: Sendable, Equatable {
    public enum TokenSelector: Sendable, Equatable {
        case label(String)
        case slot(UInt)
    }
    public var modulePath: String
    public var token: TokenSelector
    public var pinFile: String
    public var keyLabel: String
    public var pollInterval: Double = 30
    public var cacheSize: Int = 1024
    /// How long a Decrypt waits for the token on a cache miss.
    public var requestTimeout: Double = 5
    /// Where the record of wrapped local KEKs lives (kekd: STATE_DIR/pkcs11-keks.json), so a restart unwraps the
    /// recent ones before the apiserver asks; nil: no record (kekctl).
    public var issuedKEKRecordPath: String?

    public init(modulePath: String, token: TokenSelector, pinFile: String, keyLabel: String) {
        self.modulePath = modulePath; self.token = token; self.pinFile = pinFile; self.keyLabel = keyLabel
    }

    public static let flagNames: Set<String> = ["pkcs11-module", "pkcs11-token-label", "pkcs11-slot", "pkcs11-pin-file",
                                                "pkcs11-key-label", "pkcs11-poll-interval"]

    /// From flag values (names without `--`); `seconds` parses durations the caller's way. Throws a one-line reason.
    public static func parse(_ flags: [String: String], seconds: (String) -> Double?) throws(PKCS11Error) -> PKCS11Configuration {
        func required(_ name: String) throws(PKCS11Error) -> String {
            guard let value = flags[name], !value.isEmpty else { throw PKCS11Error(rv: nil, "--\(name) is required") }
            return value
        }
        let token: TokenSelector
        switch (flags["pkcs11-token-label"], flags["pkcs11-slot"]) {
        case (let label?, nil):
            guard !label.isEmpty, label.utf8.count <= 32 else { throw PKCS11Error(rv: nil, "--pkcs11-token-label must be 1 to 32 bytes") }
            token = .label(label)
        case (nil, let slot?):
            guard let n = UInt(slot) else { throw PKCS11Error(rv: nil, "--pkcs11-slot must be a slot number, got \(slot)") }
            token = .slot(n)
        case (.some, .some): throw PKCS11Error(rv: nil, "give either --pkcs11-token-label or --pkcs11-slot, not both")
        case (nil, nil): throw PKCS11Error(rv: nil, "--pkcs11-token-label or --pkcs11-slot is required")
        }
        let keyLabel = try required("pkcs11-key-label")
        guard keyLabel.utf8.count <= 100, !keyLabel.hasSuffix(KeyFamily.retiredSuffix) else {
            throw PKCS11Error(rv: nil, "--pkcs11-key-label must be at most 100 bytes and not end in \(KeyFamily.retiredSuffix)")
        }
        var configuration = PKCS11Configuration(modulePath: try required("pkcs11-module"), token: token,
                                                pinFile: try required("pkcs11-pin-file"), keyLabel: keyLabel)
        if let raw = flags["pkcs11-poll-interval"] {
            guard let s = seconds(raw), s >= 0.1, s <= 86_400 else {
                throw PKCS11Error(rv: nil, "--pkcs11-poll-interval: expected a duration from 100ms to 24h, got \(raw)")
            }
            configuration.pollInterval = s
        }
        return configuration
    }
}
