/* poll: one __wasi_poll_oneoff call subscribed to read-readiness of fd 0 and a
 * 200 ms relative monotonic clock. For the first event returned it prints
 *   stdin-ready               (then reads once, up to 64 KiB: "read=<n>")
 *   timeout
 *   stdin-error errno=<n>     (the fd_read event carried an error)
 * Exits 0, or 1 if poll_oneoff itself fails ("poll_oneoff errno=<n>"). */
#include <stdio.h>
#include <unistd.h>
#include <wasi/api.h>

#define USERDATA_STDIN 1
#define USERDATA_TIMER 2

static char buf[64 * 1024];

int main(void) {
    __wasi_subscription_t subs[2] = {0};
    subs[0].userdata = USERDATA_STDIN;
    subs[0].u.tag = __WASI_EVENTTYPE_FD_READ;
    subs[0].u.u.fd_read.file_descriptor = 0;
    subs[1].userdata = USERDATA_TIMER;
    subs[1].u.tag = __WASI_EVENTTYPE_CLOCK;
    subs[1].u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
    subs[1].u.u.clock.timeout = 200ULL * 1000000ULL;
    subs[1].u.u.clock.precision = 0;
    subs[1].u.u.clock.flags = 0; /* relative */

    __wasi_event_t events[2];
    __wasi_size_t nevents = 0;
    __wasi_errno_t err = __wasi_poll_oneoff(subs, events, 2, &nevents);
    if (err != 0 || nevents == 0) {
        printf("poll_oneoff errno=%u\n", (unsigned)err);
        return 1;
    }
    const __wasi_event_t *ev = &events[0];
    if (ev->userdata == USERDATA_TIMER) {
        puts("timeout");
        return 0;
    }
    if (ev->error != 0) {
        printf("stdin-error errno=%u\n", (unsigned)ev->error);
        return 0;
    }
    puts("stdin-ready");
    ssize_t n = read(0, buf, sizeof buf);
    printf("read=%ld\n", (long)n);
    return 0;
}
