/* writer: "writer [MiB [chunk]]" (defaults 256 and 4096) writes MiB * 1 MiB
 * bytes of a repeating 64-byte pattern to stdout with write(1, ...) calls of
 * exactly <chunk> bytes each (the last one is shorter if chunk does not divide
 * the total; a short write is completed with further writes). The pattern is
 * "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n" counted
 * from offset 0 of the stream. Nothing else goes to stdout; at the end it
 * writes "wrote <n> bytes" to stderr. Exit 0, or 1 on a write error or bad
 * arguments. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char PATTERN[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n";
#define PERIOD (sizeof PATTERN - 1)

int main(int argc, char **argv) {
    long long mib = argc > 1 ? atoll(argv[1]) : 256;
    long long chunk = argc > 2 ? atoll(argv[2]) : 4096;
    if (mib < 0 || chunk <= 0 || chunk > 64LL * 1024 * 1024) {
        fprintf(stderr, "writer: bad arguments\n");
        return 1;
    }
    /* chunk + PERIOD bytes of pattern, so any chunk can start at any phase */
    char *buf = malloc((size_t)chunk + PERIOD);
    if (!buf) {
        fprintf(stderr, "writer: out of memory\n");
        return 1;
    }
    for (long long i = 0; i < chunk + (long long)PERIOD; i++) buf[i] = PATTERN[i % PERIOD];

    unsigned long long total = (unsigned long long)mib * 1024 * 1024, done = 0;
    while (done < total) {
        unsigned long long len = total - done < (unsigned long long)chunk ? total - done : (unsigned long long)chunk;
        const char *p = buf + done % PERIOD;
        ssize_t w = write(1, p, (size_t)len);
        if (w < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "writer: write: %s\n", strerror(errno));
            return 1;
        }
        done += (unsigned long long)w;
    }
    fprintf(stderr, "wrote %llu bytes\n", done);
    return 0;
}
