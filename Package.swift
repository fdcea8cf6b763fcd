// swift-tools-version:6.0
// kekd: a Kubernetes KMS v2 plugin. No package dependencies: Foundation, Dispatch and OpenSSL only.
import PackageDescription


// Release executables are linked by lld with packed relative relocations (DT_RELR, glibc 2.36+): the static binary
// keeps PIE (ASLR) but no longer reads ~0.9 MB of RELA entries at every start, about 1 MiB less resident (issue 12).
let compactRelocations: [LinkerSetting] = [
    .unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"], .when(platforms: [.linux], configuration: .release)),
]

let package = Package(
    name: "kekd",
    products: [
        .executable(name: "kekd", targets: ["kekd"]),
        .executable(name: "kekctl", targets: ["kekctl"]),
    ],
    targets: [
        // System OpenSSL (libcrypto for AES-GCM/HKDF/HMAC/random, libssl for TLS to Vault).
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),

        // The PKCS#11 header (libp11-kit-dev); the vendor module itself is dlopen'ed at run time.
        .systemLibrary(name: "CPKCS11", providers: [.apt(["libp11-kit-dev"])]),

        // A lock ThreadSanitizer can see (Synchronization.Mutex is invisible to it on Linux).
        .target(name: "Locking"),

        // JSON documents as values (FoundationEssentials' coder underneath), for the HTTP clients.
        .target(name: "JSON"),

        // gRPC status codes and their names, shared by every layer that produces or reports one.
        .target(name: "GRPCCodes"),

        // The process behind a unix socket (SO_PEERCRED): authorised by the serving edge, recorded by the audit log.
        .target(name: "PeerIdentity"),

        // The one logger: JSON lines on stderr at a minimum level (`--log-level`), for every module.
        .target(name: "Logging", dependencies: ["JSON", "Locking"]),

        // Pure codecs and state machines: bytes in, values/bytes out, no I/O.
        .target(name: "Protobuf"),
        .target(name: "KMSProto", dependencies: ["Protobuf"]),
        .target(name: "HPACK"),
        .target(name: "HTTP2", dependencies: ["HPACK"]),
        .target(name: "GRPC", dependencies: ["HTTP2", "GRPCCodes"]),
        .target(name: "YAML"),

        // Crypto primitives over OpenSSL EVP.
        .target(name: "Crypto", dependencies: ["COpenSSL", "Locking"]),

        // HTTP/1.1 over TLS (keep-alive, deadlines, client certificates, host-name verification, chunked bodies): the
        // client Vault, the Kubernetes API client and the etcd client share.
        .target(name: "HTTPClient", dependencies: ["COpenSSL", "Crypto", "Locking"]),

        // etcd's range API (JSON gateway over HTTPClient), and the census of what etcd stores (kekctl census).
        .target(name: "Etcd", dependencies: ["HTTPClient", "JSON"]),
        .target(name: "Census", dependencies: ["Etcd", "KMSProto", "JSON"]),

        // The KMS service, envelope format, key backends.
        .target(name: "KMS", dependencies: ["KMSProto", "Crypto", "Locking", "JSON", "GRPCCodes", "Logging"]),
        .target(name: "Vault", dependencies: ["HTTPClient", "KMS", "Crypto", "Locking", "JSON", "GRPCCodes", "Logging"]),
        .target(name: "PKCS11", dependencies: ["CPKCS11", "KMS", "Crypto", "Locking", "GRPCCodes", "Logging"]),

        // Observers of the service layer.
        .target(name: "Audit", dependencies: ["Crypto", "Locking", "JSON", "Logging", "PeerIdentity"]),
        .target(name: "Metrics", dependencies: ["Locking", "GRPCCodes", "GRPC"]),
        // A strict Prometheus text-format reader (pure): kekd's metrics tests and rotate-cluster's apiserver metrics.
        .target(name: "PrometheusParser"),

        // A Kubernetes API client: kubeconfig, credentials (token, client certificate, exec plugins), REST calls.
        .target(name: "Kubernetes", dependencies: ["HTTPClient", "JSON", "YAML", "Locking"]),

        // Cluster-wide key rotation (`kekctl rotate-cluster`) as a state machine over injected ports.
        .target(name: "Rotation", dependencies: ["Crypto", "JSON", "Locking", "Kubernetes", "PrometheusParser", "KMS", "Vault", "Census", "Etcd"]),

        // What kekd and kekctl share at the command line: the flag parser and the release version.
        .target(name: "CommandLineFlags"),

        // prctl(2) is variadic and cannot be called from Swift: a two-function C wrapper for kekd's start.
        .target(name: "CProcessHardening"),

        // Unix sockets: POSIX helpers and the blocking gRPC client kekctl and the benchmark use.
        .target(name: "Transport", dependencies: ["GRPC", "Locking", "PeerIdentity"]),

        // The KMS v2 method table, the dispatcher from decoded requests to the KMS service (kekd), and a typed client of
        // a running kekd (kekctl status/encrypt/decrypt/bench/doctor).
        .target(name: "KMSRPC", dependencies: ["GRPC", "GRPCCodes", "KMS", "KMSProto", "Protobuf", "Transport", "Locking"]),

        // The edge: sockets, threads, signals, the health endpoint.
        .target(name: "Server", dependencies: ["GRPC", "GRPCCodes", "HTTP2", "KMS", "KMSProto", "KMSRPC", "Transport", "Audit", "Metrics", "Locking", "Logging"]),
        .executableTarget(name: "kekd", dependencies: ["CommandLineFlags", "Server", "KMS", "Vault", "PKCS11", "Audit", "Metrics", "Crypto", "CProcessHardening", "Locking", "GRPCCodes", "Logging"], linkerSettings: compactRelocations),
        .executableTarget(name: "kekctl", dependencies: ["CommandLineFlags", "GRPCCodes", "KMS", "KMSProto", "KMSRPC", "Audit", "Crypto", "YAML", "Locking", "Census", "Etcd", "JSON", "HTTPClient", "Kubernetes", "Rotation", "Vault", "PKCS11"], linkerSettings: compactRelocations),

        .testTarget(name: "LockingTests", dependencies: ["Locking"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport"]),
        .testTarget(name: "CommandLineFlagsTests", dependencies: ["CommandLineFlags"]),
        .testTarget(name: "kekdTests", dependencies: ["kekd", "CommandLineFlags"]),
        .testTarget(name: "KMSRPCTests", dependencies: ["KMSRPC", "KMSProto"]),
        .testTarget(name: "JSONTests", dependencies: ["JSON"]),
        .testTarget(name: "GRPCCodesTests", dependencies: ["GRPCCodes"]),
        .testTarget(name: "LoggingTests", dependencies: ["Logging", "JSON", "Locking"]),
        .testTarget(name: "CryptoTests", dependencies: ["Crypto"]),
        .testTarget(name: "ProtobufTests", dependencies: ["Protobuf", "KMSProto"]),
        .testTarget(name: "HPACKTests", dependencies: ["HPACK"]),
        .testTarget(name: "HTTP2Tests", dependencies: ["HTTP2", "HPACK"]),
        .testTarget(name: "GRPCTests", dependencies: ["GRPC", "GRPCCodes", "HTTP2", "HPACK"]),
        .testTarget(name: "KMSTests", dependencies: ["KMS", "KMSProto", "Crypto", "Locking", "GRPCCodes", "Logging"]),
        .testTarget(name: "HTTPClientTests", dependencies: ["HTTPClient"]),
        .testTarget(name: "CensusTests", dependencies: ["Census", "Etcd", "HTTPClient", "KMSProto", "JSON"]),
        .testTarget(name: "PKCS11Tests", dependencies: ["PKCS11", "KMS", "Crypto", "Logging"]),
        .testTarget(name: "VaultTests", dependencies: ["Vault", "KMS", "Crypto", "Locking", "GRPCCodes", "Logging", "JSON"]),
        .testTarget(name: "AuditTests", dependencies: ["Audit", "Crypto", "Locking", "Logging", "PeerIdentity"]),
        .testTarget(name: "MetricsTests", dependencies: ["Metrics", "PrometheusParser", "GRPCCodes", "GRPC", "HTTP2"]),
        .testTarget(name: "YAMLTests", dependencies: ["YAML"]),
        .testTarget(name: "KubernetesTests", dependencies: ["Kubernetes", "JSON", "YAML"]),
        .testTarget(name: "RotationTests", dependencies: ["Rotation", "JSON", "Locking", "KMS"]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Transport", "KMSRPC", "GRPC", "GRPCCodes", "HTTP2", "KMS", "KMSProto", "Audit", "Metrics", "Locking", "Logging"]),
    ]
)

// Release builds do not check exclusive access at run time: every class property touched through `inout` (a
// connection's output buffer, its stream table) otherwise costs a runtime call pair on every access, about 4 % of
// kekd's instructions per call. Debug builds, which every test and sanitizer run uses, keep the checks, so a
// violation still traps there.
for target in package.targets where target.type == .regular || target.type == .executable {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
}
