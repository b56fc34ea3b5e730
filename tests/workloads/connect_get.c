/* connect_get: an HTTP/1.0 client on the connect socket fd 3 (Enarx.toml: stdin, stdout,
 * stderr, then one connect entry). It sends "GET <argv[1] or /> HTTP/1.0" with "Host: <argv[2]
 * or localhost>", reads the answer to EOF and prints it on stdout. On a failed read or write it
 * prints "connect_get: <write|read>: <strerror> (errno <n>)" on stderr and exits 1. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CONNECT_FD 3

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/";
    const char *host = argc > 2 ? argv[2] : "localhost";
    char request[1024];
    int len = snprintf(request, sizeof request, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    for (int off = 0; off < len;) {
        ssize_t n = write(CONNECT_FD, request + off, (size_t)(len - off));
        if (n < 0) {
            fprintf(stderr, "connect_get: write: %s (errno %d)\n", strerror(errno), errno);
            return 1;
        }
        off += (int)n;
    }
    static char buf[64 * 1024];
    for (;;) {
        ssize_t n = read(CONNECT_FD, buf, sizeof buf);
        if (n < 0) {
            fprintf(stderr, "connect_get: read: %s (errno %d)\n", strerror(errno), errno);
            return 1;
        }
        if (n == 0) break;
        fwrite(buf, 1, (size_t)n, stdout);
    }
    close(CONNECT_FD);
    return 0;
}
