// Path arithmetic on strings (NSString's deletingLastPathComponent and lastPathComponent, without Foundation).

/// The folder holding `path` ("." for a bare name, "/" for an entry of the root), trailing slashes ignored.
public func parentFolder(of path: String) -> String {
    let trimmed = trimmingTrailingSlashes(path)
    guard let slash = trimmed.lastIndex(of: "/") else { return "." }
    if slash == trimmed.startIndex { return "/" }
    return trimmingTrailingSlashes(String(trimmed[..<slash]))
}

/// The last component of `path`, trailing slashes ignored.
public func lastPathComponent(of path: String) -> String {
    let trimmed = trimmingTrailingSlashes(path)
    guard let slash = trimmed.lastIndex(of: "/"), trimmed != "/" else { return trimmed }
    return String(trimmed[trimmed.index(after: slash)...])
}

private func trimmingTrailingSlashes(_ path: String) -> String {
    var out = Substring(path)
    while out.count > 1 && out.hasSuffix("/") { out = out.dropLast() }
    return String(out)
}
