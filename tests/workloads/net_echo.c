/* net_echo: an echo server on the listen socket fd 3 (Enarx.toml: stdin, stdout, stderr, then
 * one listen entry; prot = "tls" or "tcp" is the same to it: TLS ends in the keep). It serves
 * many connections at once with poll() and non-blocking sockets: each connection's bytes come
 * back unchanged, and a half-close from the client is answered, after the echo, by a close.
 *
 * It prints "listening" once at start, and exits 0 after argv[1] connections have ended
 * ("served <n>"), or serves for ever without an argument. Exit 1 on a failed poll/accept. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FD 3
#define MAX_CONNS 1000
#define BUF_SIZE (64 * 1024)

struct conn {
    int fd;
    size_t len, off; /* bytes read but not yet echoed: buf[off..len) */
    int eof;         /* the client half-closed */
    char *buf;
};

static struct conn conns[MAX_CONNS];
static struct pollfd pfds[MAX_CONNS + 1];
static int nconns;
static long served;

static void drop(int i) {
    close(conns[i].fd);
    free(conns[i].buf);
    conns[i] = conns[--nconns];
    served++;
}

/* Echo what is pending; returns 0 if the connection is done (error or finished). */
static int pump(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = write(c->fd, c->buf + c->off, c->len - c->off);
        if (n < 0) return errno == EAGAIN ? 1 : 0;
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    if (c->eof) return 0;
    ssize_t n = read(c->fd, c->buf, BUF_SIZE);
    if (n == 0) {
        c->eof = 1;
        return 0;
    }
    if (n < 0) return errno == EAGAIN ? 1 : 0;
    c->len = (size_t)n;
    return pump(c);
}

int main(int argc, char **argv) {
    long limit = argc > 1 ? atol(argv[1]) : -1;
    if (fcntl(LISTEN_FD, F_SETFL, O_NONBLOCK) != 0) {
        fprintf(stderr, "net_echo: fcntl: %s\n", strerror(errno));
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    while (limit < 0 || served < limit) {
        int n = 0;
        pfds[n++] = (struct pollfd){.fd = LISTEN_FD, .events = nconns < MAX_CONNS ? POLLIN : 0};
        if (nconns >= MAX_CONNS) pfds[0].fd = -1;
        for (int i = 0; i < nconns; i++)
            pfds[n++] = (struct pollfd){.fd = conns[i].fd, .events = conns[i].off < conns[i].len ? POLLOUT : POLLIN};
        if (poll(pfds, (nfds_t)n, -1) < 0) {
            fprintf(stderr, "net_echo: poll: %s\n", strerror(errno));
            return 1;
        }
        /* Connections first, from the end, so drop() (which moves the last one) is safe. */
        for (int i = nconns - 1; i >= 0; i--) {
            if (pfds[i + 1].revents == 0) continue;
            if (!pump(&conns[i])) drop(i);
        }
        if (pfds[0].revents & POLLIN) {
            for (;;) {
                struct sockaddr_storage addr;
                socklen_t len = sizeof addr;
                int fd = accept4(LISTEN_FD, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK);
                if (fd < 0) {
                    if (errno == EAGAIN) break;
                    fprintf(stderr, "net_echo: accept: %s\n", strerror(errno));
                    return 1;
                }
                conns[nconns] = (struct conn){.fd = fd, .buf = malloc(BUF_SIZE)};
                nconns++;
                if (nconns >= MAX_CONNS) break;
            }
        }
    }
    printf("served %ld\n", served);
    return 0;
}
