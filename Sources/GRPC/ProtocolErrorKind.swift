// The `kind` label of kekd_http2_protocol_errors_total: what a peer's violation cost it.
import HTTP2

/// An HTTP/2 error code sent on a violation (RST_STREAM or GOAWAY), or one of kekd's own limits. The raw value is
/// the label value: fixed snake_case, never derived from the Swift case name.
public enum ProtocolErrorKind: String, Sendable, CaseIterable {
    // RFC 9113 §7 error codes, by their RFC names.
    case noError = "no_error"
    case protocolError = "protocol_error"
    case internalError = "internal_error"
    case flowControlError = "flow_control_error"
    case settingsTimeout = "settings_timeout"
    case streamClosed = "stream_closed"
    case frameSizeError = "frame_size_error"
    case refusedStream = "refused_stream"
    case cancel = "cancel"
    case compressionError = "compression_error"
    case connectError = "connect_error"
    case enhanceYourCalm = "enhance_your_calm"
    case inadequateSecurity = "inadequate_security"
    case http11Required = "http_1_1_required"
    // kekd's limits (README, *Limits*).
    case requestTimeout = "request_timeout"
    case requestBufferLimit = "request_buffer_limit"
    case serverRequestBufferLimit = "server_request_buffer_limit"
    case queuedOutputLimit = "queued_output_limit"
    case prefaceTimeout = "preface_timeout"
    case refusedConnection = "refused_connection"

    public init(_ code: HTTP2ErrorCode) {
        switch code {
        case .noError: self = .noError
        case .protocolError: self = .protocolError
        case .internalError: self = .internalError
        case .flowControlError: self = .flowControlError
        case .settingsTimeout: self = .settingsTimeout
        case .streamClosed: self = .streamClosed
        case .frameSizeError: self = .frameSizeError
        case .refusedStream: self = .refusedStream
        case .cancel: self = .cancel
        case .compressionError: self = .compressionError
        case .connectError: self = .connectError
        case .enhanceYourCalm: self = .enhanceYourCalm
        case .inadequateSecurity: self = .inadequateSecurity
        case .http11Required: self = .http11Required
        }
    }
}
