/* net_flow: flow-control probes on the listen socket fd 3.
 *   net_flow send <MiB>  accept one connection, write <MiB> MiB (byte i is i & 0xff) with
 *                        blocking 64 KiB writes, printing "sent <n>" (MiB, flushed) after each
 *                        MiB; then close and print "done".
 *   net_flow hold <ms>   accept one connection, read its first byte (with TLS that also
 *                        completes the handshake, which the keep runs as the workload reads),
 *                        then read nothing for <ms> ms, then read to EOF and print
 *                        "received <bytes>" (the first byte included).
 *   net_flow idle <ms>   never accept: sleep <ms> ms and print "idle done".
 *   net_flow hoard <n>   print "hoarding", accept <n> connections and never read nor close one,
 *                        then accept one more (the sign to stop) and print "hoarded <n>".
 * Exit 1 with a message on stderr if a call fails. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FD 3

static int accept_one(void) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int fd = accept(LISTEN_FD, (struct sockaddr *)&addr, &len);
    if (fd < 0) fprintf(stderr, "net_flow: accept: %s\n", strerror(errno));
    return fd;
}

static char buf[64 * 1024];

static int hoard(long count) {
    printf("hoarding\n");
    fflush(stdout);
    for (long taken = 0; taken <= count; taken++) {
        if (accept_one() < 0) return 1;
    }
    printf("hoarded %ld\n", count);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: net_flow send <MiB> | hold <ms> | idle <ms> | hoard <n>\n");
        return 2;
    }
    long n = atol(argv[2]);
    if (strcmp(argv[1], "idle") == 0) {
        poll(NULL, 0, (int)n);
        printf("idle done\n");
        return 0;
    }
    if (strcmp(argv[1], "hoard") == 0) return hoard(n);
    int fd = accept_one();
    if (fd < 0) return 1;
    if (strcmp(argv[1], "send") == 0) {
        for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)(i & 0xff);
        for (long mib = 1; mib <= n; mib++) {
            for (int block = 0; block < 16; block++) {
                for (size_t off = 0; off < sizeof buf;) {
                    ssize_t w = write(fd, buf + off, sizeof buf - off);
                    if (w < 0) {
                        fprintf(stderr, "net_flow: write: %s\n", strerror(errno));
                        return 1;
                    }
                    off += (size_t)w;
                }
            }
            printf("sent %ld\n", mib);
            fflush(stdout);
        }
        close(fd);
        printf("done\n");
        return 0;
    }
    unsigned long long total = 0;
    while (total == 0) {
        ssize_t r = read(fd, buf, 1);
        if (r <= 0) {
            fprintf(stderr, "net_flow: read: %s\n", r == 0 ? "early EOF" : strerror(errno));
            return 1;
        }
        total += (unsigned long long)r;
    }
    poll(NULL, 0, (int)n);
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) {
            fprintf(stderr, "net_flow: read: %s\n", strerror(errno));
            return 1;
        }
        if (r == 0) break;
        total += (unsigned long long)r;
    }
    close(fd);
    printf("received %llu\n", total);
    return 0;
}
