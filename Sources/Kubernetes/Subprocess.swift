// Running a helper program (a kubeconfig exec credential plugin, an operator's sync command) with posix_spawn:
// stdin from /dev/null, stdout captured (bounded), stderr passed through, a deadline after which it is killed.
import FoundationEssentials
import Glibc

public struct SubprocessResult: Sendable {
    /// The exit status, or 128 + signal number when killed by a signal.
    public var status: Int32
    public var output: [UInt8]
    public var timedOut: Bool
}

public enum Subprocess {
    /// Runs `argv` (argv[0] looked up in PATH) with `environment` replacing the whole environment.
    public static func run(_ argv: [String], environment: [String: String], timeout: Double,
                           maxOutput: Int = 1 << 20) throws(KubernetesError) -> SubprocessResult {
        guard let program = argv.first, !program.isEmpty else { throw .invalid("empty command") }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw .invalid("pipe: \(String(cString: strerror(errno)))") }
        // Close-on-exec on the read end (only the child's dup2'ed copy stays open in the child).
        _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        let args = argv.map { strdup($0) } + [nil]
        let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { args.forEach { free($0) }; env.forEach { free($0) } }
        var pid = pid_t()
        let rc = posix_spawnp(&pid, program, &actions, nil, args, env)
        close(pipeFDs[1])
        guard rc == 0 else {
            close(pipeFDs[0])
            throw .invalid("cannot run \(program): \(String(cString: strerror(rc)))")
        }
        let deadline = Date(timeIntervalSinceNow: timeout)
        var output: [UInt8] = []
        var timedOut = false
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { timedOut = true; break }
            var pfd = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(min(left, 1) * 1000) + 1)
            if ready < 0 { if errno == EINTR { continue }; break }
            if ready == 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; break }
            if n == 0 { break }
            if output.count < maxOutput { output += buffer[0..<min(n, maxOutput - output.count)] }
        }
        close(pipeFDs[0])
        if timedOut { kill(pid, SIGKILL) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        return SubprocessResult(status: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), output: output, timedOut: timedOut)
    }

    /// The current environment as a dictionary.
    public static func currentEnvironment() -> [String: String] { ProcessInfo.processInfo.environment }
}
