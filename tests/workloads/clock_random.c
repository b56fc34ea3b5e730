/* clock_random: exercises the WASI clocks, poll_oneoff (through nanosleep) and
 * random_get (through getentropy). Prints, one per line:
 *   realtime=<ns>  monotonic1=<ns>  monotonic2=<ns>  slept_ms=<int>
 *   random=<32 hex>  random2=<32 hex>  clock_res=<ns>
 * slept_ms is (monotonic2 - monotonic1) / 1e6 around a 50 ms nanosleep.
 * Exits 0, or 1 if a call fails (with a message on stderr). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long ns(clockid_t clock) {
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) {
        fprintf(stderr, "clock_gettime: %s\n", strerror(errno));
        return -1;
    }
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int print_random(const char *label) {
    unsigned char buf[16];
    if (getentropy(buf, sizeof buf) != 0) {
        fprintf(stderr, "getentropy: %s\n", strerror(errno));
        return -1;
    }
    printf("%s=", label);
    for (size_t i = 0; i < sizeof buf; i++) printf("%02x", buf[i]);
    putchar('\n');
    return 0;
}

int main(void) {
    long long realtime = ns(CLOCK_REALTIME);
    long long m1 = ns(CLOCK_MONOTONIC);
    struct timespec req = {0, 50 * 1000000L};
    if (nanosleep(&req, NULL) != 0) {
        fprintf(stderr, "nanosleep: %s\n", strerror(errno));
        return 1;
    }
    long long m2 = ns(CLOCK_MONOTONIC);
    if (realtime < 0 || m1 < 0 || m2 < 0) return 1;
    printf("realtime=%lld\n", realtime);
    printf("monotonic1=%lld\n", m1);
    printf("monotonic2=%lld\n", m2);
    printf("slept_ms=%lld\n", (m2 - m1) / 1000000LL);
    if (print_random("random") || print_random("random2")) return 1;
    struct timespec res;
    if (clock_getres(CLOCK_MONOTONIC, &res) != 0) {
        fprintf(stderr, "clock_getres: %s\n", strerror(errno));
        return 1;
    }
    printf("clock_res=%lld\n", (long long)res.tv_sec * 1000000000LL + res.tv_nsec);
    return 0;
}
