// The release version, shared by kekd (`kekd --version`, Status logs, kekd_build_info) and kekctl (`kekctl --version`).
public enum BuildInfo {
    public static let version = "0.1.0"
}
