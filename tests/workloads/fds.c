/* fds: reports the file descriptors the keep says it passed in.
 *   FD_COUNT=<value of $FD_COUNT, or "(unset)">
 *   FD_NAMES=<value of $FD_NAMES, or "(unset)">
 * then, for fd in 0..FD_COUNT-1 (none if FD_COUNT is unset), one of
 *   fd <i>: filetype=<decimal __wasi_filetype_t> rights_base=0x<lowercase hex>
 *   fd <i>: errno=<decimal __wasi_errno_t>
 * Exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <wasi/api.h>

int main(void) {
    const char *count = getenv("FD_COUNT");
    const char *names = getenv("FD_NAMES");
    printf("FD_COUNT=%s\n", count ? count : "(unset)");
    printf("FD_NAMES=%s\n", names ? names : "(unset)");
    int n = count ? atoi(count) : 0;
    for (int fd = 0; fd < n; fd++) {
        __wasi_fdstat_t st;
        __wasi_errno_t err = __wasi_fd_fdstat_get((__wasi_fd_t)fd, &st);
        if (err == 0)
            printf("fd %d: filetype=%u rights_base=0x%llx\n", fd, (unsigned)st.fs_filetype,
                   (unsigned long long)st.fs_rights_base);
        else
            printf("fd %d: errno=%u\n", fd, (unsigned)err);
    }
    return 0;
}
