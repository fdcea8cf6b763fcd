// The Prometheus text exposition format, version 0.0.4.
// https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format

/// Content type of `PrometheusTextWriter`'s output, for the HTTP response.
public let prometheusTextContentType = "text/plain; version=0.0.4; charset=utf-8"

enum MetricType: String {
    case counter, gauge, histogram
}

/// Builds one exposition: a `# HELP` and `# TYPE` line per family, then its samples.
struct PrometheusTextWriter {
    private(set) var output = ""

    init() { output.reserveCapacity(8192) }

    mutating func family(_ name: String, _ type: MetricType, help: String) {
        output += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(type.rawValue)\n"
    }

    mutating func sample(_ name: String, _ value: some SampleValue) {
        sample(name, [:], value)
    }

    mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: some SampleValue) {
        output += name
        if !labels.isEmpty {
            output += "{"
            var first = true
            for (label, labelValue) in labels {
                if !first { output += "," }
                first = false
                output += "\(label)=\"\(Self.escapeLabelValue(labelValue))\""
            }
            output += "}"
        }
        output += " \(value.exposition)\n"
    }

    /// `name_bucket{…,le="…"}` per bound and `+Inf`, then `name_sum` and `name_count`.
    /// `labelName`/`labelValue` is the histogram's one label (empty name: none).
    mutating func histogram(_ name: String, labelName: String, labelValue: String,
                            snapshot: HistogramBlock.Snapshot) {
        let labelPrefix = labelName.isEmpty ? "" : "\(labelName)=\"\(Self.escapeLabelValue(labelValue))\","
        let bounds = HistogramBlock.upperBounds.map(Self.formatValue) + ["+Inf"]
        for (bound, count) in zip(bounds, snapshot.cumulative) {
            output += "\(name)_bucket{\(labelPrefix)le=\"\(bound)\"} \(count)\n"
        }
        let plain = labelName.isEmpty ? "" : "{\(labelName)=\"\(Self.escapeLabelValue(labelValue))\"}"
        output += "\(name)_sum\(plain) \(Self.formatValue(snapshot.sumSeconds))\n"
        output += "\(name)_count\(plain) \(snapshot.count)\n"
    }

    /// Label values escape backslash, double quote and line feed.
    static func escapeLabelValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == 10 }) else {
            return value
        }
        var escaped = ""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    /// HELP text escapes backslash and line feed (not quotes).
    static func escapeHelp(_ text: String) -> String {
        text.replacingAll("\\", with: "\\\\").replacingAll("\n", with: "\\n")
    }

    /// Go `strconv.ParseFloat`-compatible: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled as Prometheus does.
    static func formatValue(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}

/// A number as written in a sample line.
protocol SampleValue {
    var exposition: String { get }
}

extension UInt64: SampleValue {
    var exposition: String { String(self) }
}

extension Int: SampleValue {
    var exposition: String { String(self) }
}

extension Double: SampleValue {
    var exposition: String { PrometheusTextWriter.formatValue(self) }
}

extension String {
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        guard contains(target) else { return self }
        var result = ""
        for c in self { if c == target { result += replacement } else { result.append(c) } }
        return result
    }
}
