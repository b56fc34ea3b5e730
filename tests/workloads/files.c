/* files: exercises a preopened directory whose guest path is argv[1] (e.g.
 * "/data"), then tries to get out of it. argv[2], if given, is the host's
 * absolute path of a file outside the directory (default /etc/passwd).
 *
 * If <dir>/input.txt exists, first prints "input: <contents>" (one trailing
 * newline of the file dropped). Then one line per step, in this order:
 *   ok write hello.txt bytes=6           ("hello\n", O_CREAT|O_TRUNC)
 *   ok read hello.txt bytes=6            (content checked)
 *   ok append hello.txt bytes=6          ("world\n", O_APPEND)
 *   ok stat hello.txt size=12
 *   ok mkdir sub
 *   ok rename hello.txt sub/hello.txt
 *   ok list . names=<sorted, comma-separated entries of <dir>, no . and ..>
 *   ok list sub names=hello.txt
 *   ok unlink sub/hello.txt
 *   ok rmdir sub
 * A failed step prints "fail <step> errno=<n> (<strerror>)" instead (a content
 * or size mismatch prints "fail <step> mismatch ..."). Leftovers of an earlier
 * run (hello.txt, sub/, escapee.txt) are removed silently first, and the steps
 * leave the directory as they found it.
 *
 * Then the escape attempts, each "escape <what>: denied errno=<n>" or
 * "escape <what>: ALLOWED":
 *   dotdot-open     open <dir>/../outside.txt for reading
 *   absolute-open   path_open of argv[2] relative to the directory, made
 *                   directly (wasi-libc would refuse an absolute path outside
 *                   every preopen itself, before the runtime sees it)
 *   symlink-open    open <dir>/link-out/x (link-out: a symlink a test may have
 *                   made, pointing outside the directory)
 *   symlink-dir     open <dir>/link-out itself as a directory
 *   dotdot-create   create <dir>/../created-outside
 *   dotdot-rename   rename <dir>/escapee.txt (created for it) to <dir>/../moved-out
 *
 * Exit 0 if every step succeeded and every escape was denied, else 1. errno
 * values are WASI's (ENOENT=44, EPERM=63, ENOTCAPABLE=76, ...). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>

#define MAXPATH 1024
#define MAXNAMES 256

static const char *dir;
static int failures, allowed;

static const char *at(const char *rel) {
    static char bufs[2][MAXPATH];
    static int which;
    char *p = bufs[which ^= 1];
    snprintf(p, MAXPATH, "%s/%s", dir, rel);
    return p;
}

static void fail(const char *step) {
    int e = errno;
    printf("fail %s errno=%d (%s)\n", step, e, strerror(e));
    failures++;
}

static int write_file(const char *rel, int flags, const char *text) {
    int fd = open(at(rel), flags, 0644);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int e = errno;
    close(fd);
    if (n < 0) {
        errno = e;
        return -1;
    }
    return (int)n;
}

static ssize_t read_file(const char *rel, char *buf, size_t cap) {
    int fd = open(at(rel), O_RDONLY);
    if (fd < 0) return -1;
    size_t got = 0;
    while (got < cap - 1) {
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    return (ssize_t)got;
}

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list(const char *rel) {
    char step[64];
    snprintf(step, sizeof step, "list %s", rel);
    DIR *d = opendir(strcmp(rel, ".") == 0 ? dir : at(rel));
    if (!d) {
        fail(step);
        return;
    }
    char *names[MAXNAMES];
    int n = 0;
    struct dirent *ent;
    errno = 0;
    while ((ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
        if (n < MAXNAMES) names[n++] = strdup(ent->d_name);
    }
    int e = errno;
    closedir(d);
    if (e != 0) {
        errno = e;
        fail(step);
    } else {
        qsort(names, (size_t)n, sizeof names[0], cmp);
        printf("ok %s names=", step);
        for (int i = 0; i < n; i++) printf("%s%s", i ? "," : "", names[i]);
        putchar('\n');
    }
    for (int i = 0; i < n; i++) free(names[i]);
}

static void escape_result(const char *what, int ok) {
    if (ok) {
        printf("escape %s: ALLOWED\n", what);
        allowed++;
    } else {
        printf("escape %s: denied errno=%d\n", what, errno);
    }
}

static void escape_open(const char *what, const char *path, int flags) {
    int fd = open(path, flags, 0644);
    escape_result(what, fd >= 0);
    if (fd >= 0) close(fd);
}

static void escape_absolute(const char *path) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    __wasi_fd_t fd = 0;
    __wasi_errno_t err = dfd < 0 ? (__wasi_errno_t)errno
        : __wasi_path_open((__wasi_fd_t)dfd, 0, path, 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd);
    if (dfd >= 0) close(dfd);
    errno = err;
    escape_result("absolute-open", err == 0);
    if (err == 0) __wasi_fd_close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: files <guest dir> [<host path outside it>]\n");
        return 2;
    }
    dir = argv[1];
    static char buf[64 * 1024];

    /* leftovers of an earlier, interrupted run */
    unlink(at("sub/hello.txt"));
    rmdir(at("sub"));
    unlink(at("hello.txt"));
    unlink(at("escapee.txt"));

    ssize_t got = read_file("input.txt", buf, sizeof buf);
    if (got >= 0) {
        if (got > 0 && buf[got - 1] == '\n') buf[got - 1] = '\0';
        printf("input: %s\n", buf);
    } else if (errno != ENOENT) {
        fail("input");
    }

    int n = write_file("hello.txt", O_WRONLY | O_CREAT | O_TRUNC, "hello\n");
    if (n < 0) fail("write");
    else printf("ok write hello.txt bytes=%d\n", n);

    got = read_file("hello.txt", buf, sizeof buf);
    if (got < 0) fail("read");
    else if (strcmp(buf, "hello\n") != 0) {
        printf("fail read mismatch bytes=%ld\n", (long)got);
        failures++;
    } else printf("ok read hello.txt bytes=%ld\n", (long)got);

    n = write_file("hello.txt", O_WRONLY | O_APPEND, "world\n");
    if (n < 0) fail("append");
    else printf("ok append hello.txt bytes=%d\n", n);

    struct stat st;
    if (stat(at("hello.txt"), &st) != 0) fail("stat");
    else if (st.st_size != 12) {
        printf("fail stat mismatch size=%lld\n", (long long)st.st_size);
        failures++;
    } else printf("ok stat hello.txt size=%lld\n", (long long)st.st_size);

    if (mkdir(at("sub"), 0755) != 0) fail("mkdir");
    else printf("ok mkdir sub\n");

    if (rename(at("hello.txt"), at("sub/hello.txt")) != 0) fail("rename");
    else printf("ok rename hello.txt sub/hello.txt\n");

    list(".");
    list("sub");

    if (unlink(at("sub/hello.txt")) != 0) fail("unlink");
    else printf("ok unlink sub/hello.txt\n");

    if (rmdir(at("sub")) != 0) fail("rmdir");
    else printf("ok rmdir sub\n");

    escape_open("dotdot-open", at("../outside.txt"), O_RDONLY);
    escape_absolute(argc > 2 ? argv[2] : "/etc/passwd");
    escape_open("symlink-open", at("link-out/x"), O_RDONLY);
    escape_open("symlink-dir", at("link-out"), O_RDONLY | O_DIRECTORY);
    escape_open("dotdot-create", at("../created-outside"), O_WRONLY | O_CREAT | O_EXCL);

    if (write_file("escapee.txt", O_WRONLY | O_CREAT | O_TRUNC, "escapee\n") < 0) {
        fail("escapee");
    } else {
        escape_result("dotdot-rename", rename(at("escapee.txt"), at("../moved-out")) == 0);
        unlink(at("escapee.txt"));
    }

    fflush(stdout);
    return failures == 0 && allowed == 0 ? 0 : 1;
}
