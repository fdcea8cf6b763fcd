#define _GNU_SOURCE
#include "CProcessHardening.h"
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

int kekd_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

int kekd_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

static int has_text_relocations(const struct dl_phdr_info *info) {
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type != PT_DYNAMIC) continue;
        for (const ElfW(Dyn) *d = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr); d->d_tag != DT_NULL; d++) {
            if (d->d_tag == DT_TEXTREL || (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_TEXTREL))) return 1;
        }
    }
    return 0;
}

struct release_totals { long bytes; int error; };

static int release_object_code(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct release_totals *totals = data;
    // The executable has an empty name, libraries a path; the vDSO ("linux-vdso.so.1") is the kernel's, left alone.
    if (info->dlpi_name[0] != '\0' && info->dlpi_name[0] != '/') return 0;
    if (has_text_relocations(info)) return 0;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X) || (ph->p_flags & PF_W)) continue;
        // Whole pages inside the segment only: a page it shares with a neighbouring (writable) segment is kept.
        const uintptr_t start = (info->dlpi_addr + ph->p_vaddr + page - 1) & ~(page - 1);
        const uintptr_t end = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz) & ~(page - 1);
        if (end <= start) continue;
        if (madvise((void *)start, end - start, MADV_DONTNEED) != 0) { totals->error = errno; return 1; }
        totals->bytes += (long)(end - start);
    }
    return 0;
}

long kekd_release_code_pages(void) {
    struct release_totals totals = { 0, 0 };
    dl_iterate_phdr(release_object_code, &totals);
    if (totals.error != 0) { errno = totals.error; return -1; }
    return totals.bytes;
}
