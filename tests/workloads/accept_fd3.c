/* accept_fd3: what an Enarx TCP server does, written against WASI directly as Rust's std does
 * (TcpListener::from_raw_fd(3) + accept is __wasi_sock_accept; reads and writes on the stream
 * are fd_read/fd_write; drop is fd_close). It checks FD_COUNT is 4, accepts one connection on
 * fd 3, reads one line, answers "you said: <line>" and closes. Prints "FD_COUNT=4",
 * "FD_NAMES=<names>" and "done"; exits 1 with a message if anything fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

int main(void) {
    const char *count = getenv("FD_COUNT");
    const char *names = getenv("FD_NAMES");
    if (!count || strcmp(count, "4") != 0) {
        printf("FD_COUNT=%s, expected 4\n", count ? count : "(unset)");
        return 1;
    }
    printf("FD_COUNT=%s\nFD_NAMES=%s\n", count, names ? names : "");
    fflush(stdout);
    __wasi_fd_t fd;
    __wasi_errno_t err = __wasi_sock_accept(3, 0, &fd);
    if (err) {
        printf("sock_accept errno=%u\n", err);
        return 1;
    }
    char line[1024];
    size_t len = 0;
    while (len < sizeof line - 1 && (len == 0 || line[len - 1] != '\n')) {
        __wasi_iovec_t iov = {.buf = (uint8_t *)line + len, .buf_len = sizeof line - 1 - len};
        __wasi_size_t n;
        err = __wasi_fd_read(fd, &iov, 1, &n);
        if (err) {
            printf("fd_read errno=%u\n", err);
            return 1;
        }
        if (n == 0) break;
        len += n;
    }
    char reply[1100];
    int reply_len = snprintf(reply, sizeof reply, "you said: %.*s", (int)len, line);
    __wasi_ciovec_t out = {.buf = (const uint8_t *)reply, .buf_len = (size_t)reply_len};
    __wasi_size_t written;
    err = __wasi_fd_write(fd, &out, 1, &written);
    if (err || written != (size_t)reply_len) {
        printf("fd_write errno=%u\n", err);
        return 1;
    }
    err = __wasi_fd_close(fd);
    if (err) {
        printf("fd_close errno=%u\n", err);
        return 1;
    }
    printf("done\n");
    return 0;
}
