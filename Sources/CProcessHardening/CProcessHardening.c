#include "CProcessHardening.h"
#include <sys/prctl.h>

int kekd_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

int kekd_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }
