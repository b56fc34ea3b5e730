/* wasi_stdio: what a workload learns about its environment and its stdio, one
 * line per step (see wasi_steps.h). "wasi_stdio <section>":
 *   env      "environ count=<n>", then "env <KEY=VALUE>" for each variable
 *   stdio    for fds 0, 1 and 2: their fdstat (filetype, rights to read, write,
 *            seek and tell), their filestat's filetype and isatty(); then the
 *            calls that do not apply to a stream, on stdin and stdout
 *   poll     poll_oneoff on stdin read-readiness and a relative clock of
 *            2^64-1 ns (Rust's sleep(Duration::MAX)), then of 2^63 ns: prints
 *            which event came first; the test feeds stdin after a while
 *   socket   (with fd 3 a listen socket) fd 3's fdstat and filestat
 *            filetypes, whether fstat() says S_ISSOCK (or S_ISDIR), and
 *            getsockopt(SO_TYPE); "listening"; then the same for the fd
 *            accept() returns for the test's client
 *   sleep    "sleeping", then poll_oneoff on a relative clock of 2^64-1 ns
 *            alone (Rust's sleep(Duration::MAX)): it should never return
 *   renumber (with /data preopened) fd_renumber of stdin onto a file's fd,
 *            and onto or from a closed fd (the testsuite's stdio and renumber
 *            steps)
 * Exit 0 when every step ran; 2 on bad arguments. */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wasi_steps.h"

extern char **environ;

static void env(void) {
    size_t count = 0;
    __wasi_size_t wasi_count = 0, wasi_size = 0;
    (void)__wasi_environ_sizes_get(&wasi_count, &wasi_size);
    for (char **entry = environ; entry && *entry; entry++)
        count++;
    say("environ_sizes_get count", "%llu", wasi_count);
    say("environ count", "%llu", count);
    for (char **entry = environ; entry && *entry; entry++)
        printf("env %s\n", *entry);
}

static void stdio(void) {
    char name[64], details[128];
    for (__wasi_fd_t fd = 0; fd < 3; fd++) {
        __wasi_fdstat_t st = {0};
        __wasi_filestat_t fst = {0};
        __wasi_errno_t err = __wasi_fd_fdstat_get(fd, &st);
        snprintf(name, sizeof name, "fd %u fdstat", (unsigned)fd);
        snprintf(details, sizeof details, "filetype=%u read=%d write=%d seek=%d tell=%d", st.fs_filetype,
                 !!(st.fs_rights_base & __WASI_RIGHTS_FD_READ), !!(st.fs_rights_base & __WASI_RIGHTS_FD_WRITE),
                 !!(st.fs_rights_base & __WASI_RIGHTS_FD_SEEK), !!(st.fs_rights_base & __WASI_RIGHTS_FD_TELL));
        step(name, err, details);
        err = __wasi_fd_filestat_get(fd, &fst);
        snprintf(name, sizeof name, "fd %u filestat", (unsigned)fd);
        snprintf(details, sizeof details, "filetype=%u", fst.filetype);
        step(name, err, details);
        snprintf(name, sizeof name, "fd %u isatty", (unsigned)fd);
        say(name, "%llu", isatty(fd));
    }
    uint8_t buf[4] = {0};
    __wasi_iovec_t iov = {.buf = buf, .buf_len = sizeof buf};
    __wasi_ciovec_t ciov = {.buf = buf, .buf_len = 0};
    __wasi_size_t n;
    __wasi_filesize_t pos;
    step("stdout fd_seek", __wasi_fd_seek(1, 0, __WASI_WHENCE_SET, &pos), "");
    step("stdout fd_tell", __wasi_fd_tell(1, &pos), "");
    step("stdout fd_pwrite", __wasi_fd_pwrite(1, &ciov, 1, 0, &n), "");
    step("stdout fd_read", __wasi_fd_read(1, &iov, 1, &n), "");
    step("stdout fd_allocate", __wasi_fd_allocate(1, 0, 1), "");
    step("stdout fd_filestat_set_size", __wasi_fd_filestat_set_size(1, 0), "");
    step("stdout fd_readdir", __wasi_fd_readdir(1, buf, sizeof buf, 0, &n), "");
    step("stdout path_create_directory", __wasi_path_create_directory(1, "x"), "");
    step("stdin fd_pread", __wasi_fd_pread(0, &iov, 1, 0, &n), "");
    step("stdin fd_write", __wasi_fd_write(0, &ciov, 1, &n), "");
}

static void poll_for(const char *name, __wasi_timestamp_t timeout) {
    __wasi_subscription_t subs[2] = {0};
    subs[0].userdata = 1;
    subs[0].u.tag = __WASI_EVENTTYPE_CLOCK;
    subs[0].u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
    subs[0].u.u.clock.timeout = timeout;
    subs[1].userdata = 2;
    subs[1].u.tag = __WASI_EVENTTYPE_FD_READ;
    subs[1].u.u.fd_read.file_descriptor = 0;
    __wasi_event_t events[2];
    __wasi_size_t nevents = 0;
    __wasi_errno_t err = __wasi_poll_oneoff(subs, events, 2, &nevents);
    const char *first = nevents == 0 ? "none" : events[0].userdata == 1 ? "clock" : "stdin";
    char details[64];
    snprintf(details, sizeof details, "first=%s", first);
    step(name, err, details);
}

static void poll(void) {
    poll_for("poll with a clock of 2^64-1 ns", UINT64_MAX);
    char buf[256];
    ssize_t n = read(0, buf, sizeof buf);  /* takes what woke it; the next poll waits for more */
    say("read", "n=%llu", n > 0 ? (unsigned long long)n : 0);
    poll_for("poll with a clock of 2^63 ns", 1ULL << 63);
}

/* What a socket says it is: its fdstat, its filestat, fstat() and getsockopt(SO_TYPE). */
static void describe_socket(const char *what, int fd) {
    char name[64], details[96];
    __wasi_fdstat_t st = {0};
    __wasi_filestat_t fst = {0};
    struct stat sb = {0};
    int type = 0;
    socklen_t len = sizeof type;
    __wasi_errno_t err = __wasi_fd_fdstat_get((__wasi_fd_t)fd, &st);
    if (err == 0)
        err = __wasi_fd_filestat_get((__wasi_fd_t)fd, &fst);
    snprintf(name, sizeof name, "%s filetypes", what);
    snprintf(details, sizeof details, "fdstat=%u filestat=%u", st.fs_filetype, fst.filetype);
    step(name, err, details);
    snprintf(name, sizeof name, "%s fstat", what);
    err = fstat(fd, &sb) == 0 ? 0 : errno;
    snprintf(details, sizeof details, "socket=%d dir=%d", S_ISSOCK(sb.st_mode), S_ISDIR(sb.st_mode));
    step(name, err, details);
    snprintf(name, sizeof name, "%s getsockopt SO_TYPE", what);
    err = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 ? 0 : errno;
    snprintf(details, sizeof details, "stream=%d", type == SOCK_STREAM);
    step(name, err, details);
}

/* With fd 3 a listen socket: describe it, take one connection, describe that. */
static void sockets(void) {
    describe_socket("listen", 3);
    puts("listening");
    fflush(stdout);
    int conn = accept(3, NULL, NULL);
    step("accept", conn < 0 ? errno : 0, "");
    if (conn < 0)
        return;
    describe_socket("accepted", conn);
    close(conn);
}

/* Rust's sleep(Duration::MAX): one relative clock of 2^64-1 ns, nothing else. */
static void sleep_forever(void) {
    __wasi_subscription_t sub = {0};
    sub.u.tag = __WASI_EVENTTYPE_CLOCK;
    sub.u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
    sub.u.u.clock.timeout = UINT64_MAX;
    __wasi_event_t event;
    __wasi_size_t nevents = 0;
    puts("sleeping");
    fflush(stdout);
    step("woke up", __wasi_poll_oneoff(&sub, &event, 1, &nevents), "");
}

static void renumber(void) {
    __wasi_fdstat_t st;
    __wasi_fd_t root = find_preopen("/data");
    __wasi_fd_t target;
    __wasi_errno_t err = __wasi_path_open(root, 0, "renumber.txt", __WASI_OFLAGS_CREAT, 0, 0, 0, &target);
    step("open a file", err, "");
    if (err != 0)
        return;
    step("renumber stdin onto it", __wasi_fd_renumber(0, target), "");
    step("fdstat of the target", __wasi_fd_fdstat_get(target, &st), "");
    step("fdstat of stdin", __wasi_fd_fdstat_get(0, &st), "");
    step("renumber onto a closed fd", __wasi_fd_renumber(target, 0), "");
    step("renumber a closed fd", __wasi_fd_renumber(0, target), "");
    step("close the target", __wasi_fd_close(target), "");
    step("unlink the file", __wasi_path_unlink_file(root, "renumber.txt"), "");
}

int main(int argc, char **argv) {
    const char *section = argc > 1 ? argv[1] : "";
    if (strcmp(section, "env") == 0)
        env();
    else if (strcmp(section, "stdio") == 0)
        stdio();
    else if (strcmp(section, "poll") == 0)
        poll();
    else if (strcmp(section, "socket") == 0)
        sockets();
    else if (strcmp(section, "sleep") == 0)
        sleep_forever();
    else if (strcmp(section, "renumber") == 0)
        renumber();
    else {
        fprintf(stderr, "usage: wasi_stdio env|stdio|poll|socket|sleep|renumber\n");
        return 2;
    }
    return 0;
}
