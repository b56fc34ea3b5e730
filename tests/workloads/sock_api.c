/* sock_api: the WASI socket calls one by one on the listen socket fd 3, printing one line per
 * step (the test drives a client through the same steps):
 *   recv-stdout errno=<n>       sock_recv on fd 1 (not a socket)
 *   listen filetype=<t>         fd_fdstat_get on fd 3
 *   accept-nonblock errno=<n>   sock_accept with NONBLOCK set on fd 3 and nobody connecting
 *   ready                       (the client connects now)
 *   poll listen ready           poll_oneoff on fd 3 reported a connection
 *   accepted flags=<f> filetype=<t>   sock_accept(fd 3, NONBLOCK), then fd_fdstat_get
 *   recv-nonblock errno=<n>     sock_recv before the client sent anything
 *   sent 6                      sock_send "hello\n", polling for FD_WRITE while it says AGAIN
 *                               (the client answers "ping-pong")
 *   peek=<4 bytes>              poll, then sock_recv with RECV_PEEK
 *   waitall=<9 bytes>           sock_recv with RECV_WAITALL
 *   shutdown                    sock_shutdown(WR): the client sees EOF and sends "after"
 *   tail=<bytes to EOF>         fd_read until the client closes
 *   send-closed errno=<n>       sock_send after fd_close
 *   shutdown-listen errno=<n>   sock_shutdown on the listen socket
 *   recv-listen errno=<n>       sock_recv on the listen socket */
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

#define LISTEN_FD 3

static __wasi_errno_t recv_some(__wasi_fd_t fd, char *buf, size_t len, __wasi_riflags_t flags, size_t *got) {
    __wasi_iovec_t iov = {.buf = (uint8_t *)buf, .buf_len = len};
    __wasi_size_t n = 0;
    __wasi_roflags_t roflags = 0;
    __wasi_errno_t err = __wasi_sock_recv(fd, &iov, 1, flags, &n, &roflags);
    *got = n;
    return err;
}

static void wait_for(__wasi_fd_t fd, __wasi_eventtype_t type) {
    __wasi_subscription_t sub = {.userdata = 1, .u.tag = type};
    sub.u.u.fd_read.file_descriptor = fd; /* fd_write has the same layout */
    __wasi_event_t event;
    __wasi_size_t n;
    __wasi_poll_oneoff(&sub, &event, 1, &n);
}

int main(void) {
    char buf[256];
    size_t got;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("recv-stdout errno=%u\n", recv_some(1, buf, sizeof buf, 0, &got));
    __wasi_fdstat_t stat;
    __wasi_fd_fdstat_get(LISTEN_FD, &stat);
    printf("listen filetype=%u\n", stat.fs_filetype);
    __wasi_fd_fdstat_set_flags(LISTEN_FD, __WASI_FDFLAGS_NONBLOCK);
    __wasi_fd_t fd;
    printf("accept-nonblock errno=%u\n", __wasi_sock_accept(LISTEN_FD, 0, &fd));
    printf("ready\n");
    wait_for(LISTEN_FD, __WASI_EVENTTYPE_FD_READ);
    printf("poll listen ready\n");
    __wasi_errno_t err = __wasi_sock_accept(LISTEN_FD, __WASI_FDFLAGS_NONBLOCK, &fd);
    if (err) {
        printf("accept errno=%u\n", err);
        return 1;
    }
    __wasi_fd_fdstat_get(fd, &stat);
    printf("accepted flags=%u filetype=%u\n", stat.fs_flags, stat.fs_filetype);
    printf("recv-nonblock errno=%u\n", recv_some(fd, buf, sizeof buf, 0, &got));
    __wasi_ciovec_t hello = {.buf = (const uint8_t *)"hello\n", .buf_len = 6};
    __wasi_size_t sent = 0;
    /* Non-blocking: a TLS socket takes data once its handshake is done; poll says when. */
    while ((err = __wasi_sock_send(fd, &hello, 1, 0, &sent)) == __WASI_ERRNO_AGAIN)
        wait_for(fd, __WASI_EVENTTYPE_FD_WRITE);
    printf("sent %u\n", err ? 0 : sent);
    /* Blocking from here on, so WAITALL and the reads to EOF wait as they should. */
    __wasi_fd_fdstat_set_flags(fd, 0);
    wait_for(fd, __WASI_EVENTTYPE_FD_READ);
    err = recv_some(fd, buf, 4, __WASI_RIFLAGS_RECV_PEEK, &got);
    printf("peek=%.*s\n", (int)got, buf);
    err = recv_some(fd, buf, 9, __WASI_RIFLAGS_RECV_WAITALL, &got);
    printf("waitall=%.*s\n", (int)got, buf);
    err = __wasi_sock_shutdown(fd, __WASI_SDFLAGS_WR);
    printf("shutdown%s\n", err ? " failed" : "");
    size_t len = 0;
    for (;;) {
        __wasi_iovec_t iov = {.buf = (uint8_t *)buf + len, .buf_len = sizeof buf - 1 - len};
        __wasi_size_t n;
        if (__wasi_fd_read(fd, &iov, 1, &n) || n == 0) break;
        len += n;
    }
    printf("tail=%.*s\n", (int)len, buf);
    __wasi_fd_close(fd);
    printf("send-closed errno=%u\n", __wasi_sock_send(fd, &hello, 1, 0, &sent));
    printf("shutdown-listen errno=%u\n", __wasi_sock_shutdown(LISTEN_FD, __WASI_SDFLAGS_RD));
    printf("recv-listen errno=%u\n", recv_some(LISTEN_FD, buf, sizeof buf, 0, &got));
    return 0;
}
