// The HTTPS/1.1 client Vault talks through lives in its own target (shared with the Kubernetes and etcd clients).
// Re-exported: Vault's public API speaks its types (Endpoint, TLSSettings, TransportError), so users of Vault, and
// every file here, see them without importing a second module.
@_exported import HTTPClient
