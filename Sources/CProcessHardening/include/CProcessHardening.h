#ifndef KEKD_CPROCESSHARDENING_H
#define KEKD_CPROCESSHARDENING_H
/// Marks the process not dumpable (no core dump, no ptrace attach by same-uid processes, /proc/PID/mem and
/// /proc/PID/environ root-only). prctl(2) is variadic, which Swift cannot call, hence this C wrapper.
/// Returns 0 or -1 with errno set.
int kekd_set_not_dumpable(void);
/// prctl(PR_GET_DUMPABLE): 1 when dumpable, 0 when not, -1 on error.
int kekd_get_dumpable(void);
/// Drops this process's page-table entries for the code of the executable and of its shared libraries
/// (madvise MADV_DONTNEED over each loaded object's read-only executable segment, whole pages only). The pages stay
/// in the page cache: code that runs again comes back with a minor fault, code that ran only at start-up stops
/// counting in the resident set (the kernel maps code around each fault, so start-up leaves most of the binary's
/// code resident). Objects with text relocations are skipped (their code pages hold private data).
/// Returns the bytes released from, or -1 with errno set.
long kekd_release_code_pages(void);
#endif
