/* fileio: "fileio <dir> [MiB [chunk]]" (defaults 64 and 1048576) writes MiB *
 * 1 MiB bytes to <dir>/fileio.bin with write() calls of <chunk> bytes, closes
 * it, reads it back with read() calls of <chunk> bytes, checks every byte,
 * and removes the file. The content is byte i = (i * 7 + i / 4096) & 0xff, so
 * a misplaced or repeated chunk shows. Prints one line:
 *   write_ms=<ms> read_ms=<ms> bytes=<n>
 * timed with CLOCK_MONOTONIC inside the workload (open to close, each). Exit 0,
 * or 1 with "fail <step> ..." on stdout on an error or a content mismatch. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static unsigned char expected(long long i) { return (unsigned char)((i * 7 + i / 4096) & 0xff); }

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fileio <dir> [MiB [chunk]]\n");
        return 2;
    }
    long long total = (argc > 2 ? atoll(argv[2]) : 64) * 1024 * 1024;
    long long chunk = argc > 3 ? atoll(argv[3]) : 1 << 20;
    if (total < 0 || chunk <= 0 || chunk > 64LL << 20) {
        fprintf(stderr, "fileio: bad arguments\n");
        return 2;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/fileio.bin", argv[1]);
    unsigned char *buf = malloc((size_t)chunk);
    if (!buf) {
        printf("fail malloc\n");
        return 1;
    }

    double t0 = now_ms();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        printf("fail open-write\n");
        return 1;
    }
    for (long long done = 0; done < total;) {
        long long n = total - done < chunk ? total - done : chunk;
        for (long long k = 0; k < n; k++) buf[k] = expected(done + k);
        ssize_t w = write(fd, buf, (size_t)n);
        if (w <= 0) {
            printf("fail write at %lld\n", done);
            return 1;
        }
        done += w;
    }
    close(fd);
    double t1 = now_ms();

    fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("fail open-read\n");
        return 1;
    }
    long long got = 0;
    for (;;) {
        ssize_t r = read(fd, buf, (size_t)chunk);
        if (r < 0) {
            printf("fail read at %lld\n", got);
            return 1;
        }
        if (r == 0) break;
        for (ssize_t k = 0; k < r; k++) {
            if (buf[k] != expected(got + k)) {
                printf("fail mismatch at %lld\n", got + k);
                return 1;
            }
        }
        got += r;
    }
    close(fd);
    double t2 = now_ms();
    unlink(path);
    if (got != total) {
        printf("fail size %lld of %lld\n", got, total);
        return 1;
    }
    printf("write_ms=%.1f read_ms=%.1f bytes=%lld\n", t1 - t0, t2 - t1, total);
    return 0;
}
