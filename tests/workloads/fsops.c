/* fsops: "fsops <dir>" runs the file operations the `files` workload does not,
 * in a preopened directory <dir> (a guest path, e.g. "/data"), and prints one
 * line per step: "<step>: ok[ <details>]" or "<step>: errno=<n>" (WASI errno
 * values: EEXIST=20, EINVAL=28, ELOOP=32, ENOENT=44, ENOTDIR=54, ENOTEMPTY=55,
 * ENOTSUP=58, ENOTCAPABLE=76, ...). The lines hold no inode numbers or
 * current times, so two runs on fresh directories print the same.
 *
 * It expects, made by the test: <dir>/out-rel, a symlink to "../outside/x",
 * and <dir>/out-abs, a symlink to an absolute path outside the directory (the
 * "outside" file). It creates everything else under <dir>/w (removed first if
 * left by an earlier run) and removes it at the end, except the escape steps'
 * targets, which must never appear. Exit 0 when every step ran (whatever its
 * result); 2 on bad arguments. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

static const char *at(const char *rel) {
    static char bufs[4][1024];
    static int which;
    char *p = bufs[which = (which + 1) & 3];
    snprintf(p, sizeof bufs[0], "%s/%s", dir, rel);
    return p;
}

static void result(const char *step, int ok, const char *details) {
    if (ok) printf("%s: ok%s%s\n", step, details[0] ? " " : "", details);
    else printf("%s: errno=%d\n", step, errno);
}

static void check(const char *step, int rc) { result(step, rc == 0, ""); }

static void cleanup(void) {
    const char *names[] = {"w/sub/deep", "w/a.txt", "w/b.txt", "w/hard", "w/sym", "w/loop1", "w/loop2",
                           "w/dangling", "w/sub/rel", "w/followed", "w/moved", "w/sub/x", "w/app.txt", NULL};
    for (int i = 0; names[i]; i++) {
        unlink(at(names[i]));
        rmdir(at(names[i]));
    }
    rmdir(at("w/sub"));
    rmdir(at("w"));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fsops <dir>\n");
        return 2;
    }
    dir = argv[1];
    char details[256], buf[256];
    struct stat st;
    cleanup();
    check("mkdir w", mkdir(at("w"), 0755));

    /* pwrite, pread, seek, tell, truncate, allocate, sync */
    int fd = open(at("w/a.txt"), O_RDWR | O_CREAT | O_EXCL, 0644);
    result("create a.txt", fd >= 0, "");
    ssize_t n = pwrite(fd, "0123456789", 10, 0);
    snprintf(details, sizeof details, "n=%zd", n);
    result("pwrite 0", n == 10, details);
    n = pwrite(fd, "XY", 2, 20);
    result("pwrite past end", n == 2, "");
    fstat(fd, &st);
    snprintf(details, sizeof details, "size=%lld", (long long)st.st_size);
    result("fstat", 1, details);
    memset(buf, 0, sizeof buf);
    n = pread(fd, buf, 5, 3);
    snprintf(details, sizeof details, "%zd:%.*s", n, (int)(n > 0 ? n : 0), buf);
    result("pread 3", n >= 0, details);
    n = pread(fd, buf, sizeof buf, 15);
    snprintf(details, sizeof details, "n=%zd zero=%d tail=%.2s", n, buf[0] == 0 && buf[4] == 0, buf + 5);
    result("pread hole", n >= 0, details);
    off_t pos = lseek(fd, -4, SEEK_END);
    snprintf(details, sizeof details, "pos=%lld", (long long)pos);
    result("seek end-4", pos >= 0, details);
    pos = lseek(fd, 1, SEEK_CUR);
    snprintf(details, sizeof details, "pos=%lld", (long long)pos);
    result("seek cur+1", pos >= 0, details);
    pos = lseek(fd, -100, SEEK_SET);
    result("seek negative", pos >= 0, "");
    n = read(fd, buf, 3);
    snprintf(details, sizeof details, "%zd:%.*s", n, (int)(n > 0 ? n : 0), buf);
    result("read at 19", n >= 0, details);
    check("ftruncate 4", ftruncate(fd, 4));
    fstat(fd, &st);
    snprintf(details, sizeof details, "size=%lld", (long long)st.st_size);
    result("fstat after truncate", 1, details);
    errno = posix_fallocate(fd, 0, 100);
    fstat(fd, &st);
    snprintf(details, sizeof details, "size=%lld", (long long)st.st_size);
    result("fallocate 100", errno == 0, details);
    check("fsync", fsync(fd));
    check("fdatasync", fdatasync(fd));
    struct timespec times[2] = {{1000000000, 5}, {1200000000, 7}};
    check("futimens", futimens(fd, times));
    fstat(fd, &st);
    snprintf(details, sizeof details, "atime=%lld.%09ld mtime=%lld.%09ld", (long long)st.st_atim.tv_sec,
             st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    result("fstat times", 1, details);
    close(fd);

    /* append mode and flags */
    fd = open(at("w/app.txt"), O_WRONLY | O_CREAT | O_APPEND, 0644);
    n = write(fd, "one\n", 4);
    result("append write", n == 4, "");
    n = pwrite(fd, "two\n", 4, 0);
    result("pwrite on append fd", n >= 0, "");
    int flags = fcntl(fd, F_GETFL);
    result("getfl append", flags >= 0, (flags & O_APPEND) ? "append" : "no-append");
    check("setfl no-append", fcntl(fd, F_SETFL, flags & ~O_APPEND));
    flags = fcntl(fd, F_GETFL);
    result("getfl after", flags >= 0, (flags & O_APPEND) ? "append" : "no-append");
    lseek(fd, 0, SEEK_SET);
    n = write(fd, "ONE\n", 4);
    close(fd);
    fd = open(at("w/app.txt"), O_RDONLY);
    n = read(fd, buf, sizeof buf);
    for (ssize_t i = 0; i + 1 < n; i++)
        if (buf[i] == '\n') buf[i] = '|'; /* one output line */
    snprintf(details, sizeof details, "%.*s", (int)(n > 0 ? n - 1 : 0), buf);
    result("append content", n >= 0, details);
    n = write(fd, "x", 1);
    result("write on read-only fd", n >= 0, "");
    close(fd);

    /* stat by path, times by path */
    struct timespec ptimes[2] = {{0, UTIME_OMIT}, {1300000000, 0}};
    check("utimensat", utimensat(AT_FDCWD, at("w/a.txt"), ptimes, 0));
    stat(at("w/a.txt"), &st);
    snprintf(details, sizeof details, "atime=%lld mtime=%lld size=%lld nlink=%lld", (long long)st.st_atim.tv_sec,
             (long long)st.st_mtim.tv_sec, (long long)st.st_size, (long long)st.st_nlink);
    result("stat a.txt", 1, details);
    check("stat missing", stat(at("w/nope"), &st));

    /* links and symlinks */
    check("link", link(at("w/a.txt"), at("w/hard")));
    stat(at("w/hard"), &st);
    snprintf(details, sizeof details, "nlink=%lld", (long long)st.st_nlink);
    result("stat hard", 1, details);
    check("symlink", symlink("a.txt", at("w/sym")));
    n = readlink(at("w/sym"), buf, sizeof buf);
    snprintf(details, sizeof details, "%.*s", (int)(n > 0 ? n : 0), buf);
    result("readlink", n >= 0, details);
    n = readlink(at("w/sym"), buf, 3);
    snprintf(details, sizeof details, "n=%zd", n);
    result("readlink short buffer", n >= 0, details);
    check("readlink of a file", readlink(at("w/a.txt"), buf, sizeof buf) < 0 ? -1 : 0);
    lstat(at("w/sym"), &st);
    result("lstat sym", 1, S_ISLNK(st.st_mode) ? "link" : "not-link");
    stat(at("w/sym"), &st);
    snprintf(details, sizeof details, "%s size=%lld", S_ISREG(st.st_mode) ? "file" : "other", (long long)st.st_size);
    result("stat sym", 1, details);
    check("linkat follow", linkat(AT_FDCWD, at("w/sym"), AT_FDCWD, at("w/followed"), AT_SYMLINK_FOLLOW));
    lstat(at("w/followed"), &st);
    result("lstat followed", 1, S_ISREG(st.st_mode) ? "file" : "not-file");
    check("symlink absolute", symlink("/etc/passwd", at("w/abs")));
    check("symlink loop1", symlink("loop2", at("w/loop1")));
    check("symlink loop2", symlink("loop1", at("w/loop2")));
    fd = open(at("w/loop1"), O_RDONLY);
    result("open loop", fd >= 0, "");
    check("symlink dangling", symlink("nowhere", at("w/dangling")));
    check("stat dangling", stat(at("w/dangling"), &st));
    check("lstat dangling", lstat(at("w/dangling"), &st));
    fd = open(at("w/sym"), O_RDONLY | O_NOFOLLOW);
    result("open nofollow", fd >= 0, "");

    /* directories, renames, errors */
    check("mkdir sub", mkdir(at("w/sub"), 0755));
    check("mkdir again", mkdir(at("w/sub"), 0755));
    check("rename into sub", rename(at("w/hard"), at("w/sub/x")));
    check("rmdir non-empty", rmdir(at("w/sub")));
    check("unlink a dir", unlink(at("w/sub")));
    fd = open(at("w/a.txt"), O_RDONLY | O_DIRECTORY);
    result("open file as dir", fd >= 0, "");
    fd = open(at("w/a.txt"), O_RDONLY | O_CREAT | O_EXCL, 0644);
    result("create existing", fd >= 0, "");
    fd = open(at("w/sub"), O_WRONLY);
    result("open dir for writing", fd >= 0, "");
    check("rename over", rename(at("w/app.txt"), at("w/b.txt")) || rename(at("w/b.txt"), at("w/moved")));

    /* a directory fd as the base of relative operations */
    int sub = open(at("w/sub"), O_RDONLY | O_DIRECTORY);
    result("open sub", sub >= 0, "");
    fd = openat(sub, "x", O_RDONLY);
    n = fd >= 0 ? read(fd, buf, 4) : -1;
    snprintf(details, sizeof details, "%.*s", (int)(n > 0 ? n : 0), buf);
    result("openat sub/x", n >= 0, details);
    close(fd);
    check("mkdirat sub/deep", mkdirat(sub, "deep", 0755));
    check("symlinkat sub/rel", symlinkat("../a.txt", sub, "rel"));
    fd = openat(sub, "rel", O_RDONLY);
    result("openat up through a symlink", fd >= 0, "");
    fd = openat(sub, "../a.txt", O_RDONLY);
    result("openat sub/../a.txt", fd >= 0, "");
    fstatat(sub, "deep", &st, 0);
    result("fstatat deep", 1, S_ISDIR(st.st_mode) ? "dir" : "not-dir");
    check("unlinkat deep", unlinkat(sub, "deep", AT_REMOVEDIR));
    DIR *d = opendir(at("w/sub"));
    int count = 0;
    struct dirent *ent;
    while (d && (ent = readdir(d)) != NULL) count++;
    if (d) closedir(d);
    snprintf(details, sizeof details, "entries=%d", count);
    result("readdir sub", d != NULL, details);
    close(sub);

    /* escapes through links: must all be refused, and touch nothing outside */
    check("escape link-follow-rel", linkat(AT_FDCWD, at("out-rel"), AT_FDCWD, at("w/stolen1"), AT_SYMLINK_FOLLOW));
    check("escape link-follow-abs", linkat(AT_FDCWD, at("out-abs"), AT_FDCWD, at("w/stolen2"), AT_SYMLINK_FOLLOW));
    struct timespec old[2] = {{1, 0}, {1, 0}};
    check("escape utimens-follow", utimensat(AT_FDCWD, at("out-rel"), old, 0));
    check("escape stat-follow", stat(at("out-abs"), &st));
    check("escape truncate-follow", truncate(at("out-rel"), 0));
    check("escape rename-out", rename(at("w/a.txt"), at("../renamed-out")));
    check("escape link-out", link(at("w/a.txt"), at("../linked-out")));
    check("escape symlink-out", symlink("x", at("../symlinked-out")));
    check("escape mkdir-out", mkdir(at("../made-out"), 0755));
    check("escape unlink-out", unlink(at("../outside/x")));
    check("lstat out-rel", lstat(at("out-rel"), &st));
    n = readlink(at("out-rel"), buf, sizeof buf);
    snprintf(details, sizeof details, "%.*s", (int)(n > 0 ? n : 0), buf);
    result("readlink out-rel", n >= 0, details);

    unlink(at("w/abs"));
    cleanup();
    struct stat gone;
    result("cleaned up", stat(at("w"), &gone) != 0, "");
    fflush(stdout);
    return 0;
}
