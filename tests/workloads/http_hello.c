/* http_hello: a tiny HTTP/1.0 server on the listen socket fd 3, one connection at a time with
 * blocking accept/read/write (as a simple server is written). For each connection it reads the
 * request head (up to the blank line, 8 KiB at most), answers
 *   200 OK, "Hello from a motte keep!\n" and, for "GET /echo?<text>", "echo: <text>\n"
 * and closes. It prints "listening" at start and "served <n>" after argv[1] requests (serving for
 * ever without an argument). A connection that fails (reset, TLS error) is skipped: it prints
 * "connection error: <strerror>" on stderr and goes on with the next one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FD 3

static int write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void serve(int fd) {
    char request[8192 + 1];
    size_t len = 0;
    while (len < sizeof request - 1) {
        ssize_t n = read(fd, request + len, sizeof request - 1 - len);
        if (n < 0) {
            fprintf(stderr, "connection error: %s\n", strerror(errno));
            return;
        }
        if (n == 0) break;
        len += (size_t)n;
        request[len] = 0;
        if (strstr(request, "\r\n\r\n")) break;
    }
    request[len] = 0;
    char body[9000];
    int body_len = snprintf(body, sizeof body, "Hello from a motte keep!\n");
    if (strncmp(request, "GET /echo?", 10) == 0) {
        char *end = strchr(request + 10, ' ');
        if (end) *end = 0;
        body_len += snprintf(body + body_len, sizeof body - (size_t)body_len, "echo: %s\n", request + 10);
    }
    char head[200];
    int head_len = snprintf(head, sizeof head,
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                            "Connection: close\r\n\r\n", body_len);
    if (write_all(fd, head, (size_t)head_len) || write_all(fd, body, (size_t)body_len))
        fprintf(stderr, "connection error: %s\n", strerror(errno));
}

int main(int argc, char **argv) {
    long limit = argc > 1 ? atol(argv[1]) : -1;
    printf("listening\n");
    fflush(stdout);
    for (long served = 0; limit < 0 || served < limit; served++) {
        struct sockaddr_storage addr;
        socklen_t addr_len = sizeof addr;
        int fd = accept(LISTEN_FD, (struct sockaddr *)&addr, &addr_len);
        if (fd < 0) {
            fprintf(stderr, "http_hello: accept: %s\n", strerror(errno));
            return 1;
        }
        serve(fd);
        close(fd);
    }
    printf("served %ld\n", limit);
    return 0;
}
