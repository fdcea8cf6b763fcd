#ifndef KEKD_CPROCESSHARDENING_H
#define KEKD_CPROCESSHARDENING_H
/// Marks the process not dumpable (no core dump, no ptrace attach by same-uid processes, /proc/PID/mem and
/// /proc/PID/environ root-only). prctl(2) is variadic, which Swift cannot call, hence this C wrapper.
/// Returns 0 or -1 with errno set.
int kekd_set_not_dumpable(void);
/// prctl(PR_GET_DUMPABLE): 1 when dumpable, 0 when not, -1 on error.
int kekd_get_dumpable(void);
#endif
