/* echo: copies stdin to stdout with read(0)/write(1), up to 64 KiB at a time,
 * until EOF, printing nothing else. With "--count" it echoes nothing and prints
 * only "bytes=<n>" at the end. Exit 0, or 1 (with a message on stderr) on an
 * I/O error. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char buf[64 * 1024];

int main(int argc, char **argv) {
    int count_only = argc > 1 && strcmp(argv[1], "--count") == 0;
    unsigned long long total = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "echo: read: %s\n", strerror(errno));
            return 1;
        }
        total += (unsigned long long)n;
        if (count_only) continue;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                fprintf(stderr, "echo: write: %s\n", strerror(errno));
                return 1;
            }
            off += w;
        }
    }
    if (count_only) printf("bytes=%llu\n", total);
    return 0;
}
