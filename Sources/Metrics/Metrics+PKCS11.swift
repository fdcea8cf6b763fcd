// The PKCS#11 backend's token state: whether the token answers and, when not, why (a CK_RV name or short reason).
extension KekdMetrics {
    /// PKCS#11 backend only: nil while the token answers, else the CK_RV name (e.g. `CKR_TOKEN_NOT_PRESENT`) or a
    /// short reason, read at scrape time.
    public func setPKCS11ProblemProvider(_ f: @escaping @Sendable () -> String?) {
        pkcs11Problem.withLock { $0 = f }
    }

    func renderPKCS11(_ w: inout PrometheusTextWriter) {
        guard let provider = pkcs11Problem.withLock({ $0 }) else { return }
        let problem = provider()
        w.family("kekd_pkcs11_token_up", .gauge, help: "1 while the PKCS#11 token answers; 0 while uncached Decrypts fail.")
        w.sample("kekd_pkcs11_token_up", problem == nil ? 1 : 0)
        if let problem {
            w.family("kekd_pkcs11_token_error_info", .gauge, help: "Why the PKCS#11 token is unusable (CK_RV name or reason).")
            w.sample("kekd_pkcs11_token_error_info", ["error": problem], 1)
        }
    }
}
