/* What the wasi_* workloads share: one output line per step, and the scratch
 * directory they work in.
 *
 * A step prints "<step>: ok[ <details>]" or "<step>: errno=<n>" (a WASI errno
 * value: ACCES=2, BADF=8, EXIST=20, INVAL=28, ISDIR=31, NOENT=44, NOTDIR=54,
 * NOTSUP=58, PERM=63, SPIPE=70, NOTCAPABLE=76, ...). Lines hold no inode
 * numbers or times, so two runs print the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

static void step(const char *name, __wasi_errno_t err, const char *details) {
    if (err != 0)
        printf("%s: errno=%u\n", name, (unsigned)err);
    else if (details != NULL && details[0] != '\0')
        printf("%s: ok %s\n", name, details);
    else
        printf("%s: ok\n", name);
}

static void say(const char *name, const char *fmt, unsigned long long value) {
    char details[96];
    snprintf(details, sizeof details, fmt, value);
    step(name, 0, details);
}

/* The preopened directory whose guest path is `name`, or (fd_t)-1. */
static __wasi_fd_t find_preopen(const char *name) {
    for (__wasi_fd_t fd = 3; fd < 256; fd++) {
        __wasi_prestat_t prestat;
        if (__wasi_fd_prestat_get(fd, &prestat) != 0 || prestat.tag != __WASI_PREOPENTYPE_DIR)
            continue;
        char found[256] = {0};
        size_t len = prestat.u.dir.pr_name_len;
        if (len >= sizeof found || __wasi_fd_prestat_dir_name(fd, (uint8_t *)found, len) != 0)
            continue;
        if (strlen(name) == len && memcmp(found, name, len) == 0)
            return fd;
    }
    return (__wasi_fd_t)-1;
}

/* The preopen that argv[1] names (e.g. "/data"); without one, exit 2 with a usage line. */
static __wasi_fd_t preopen_argument(int argc, char **argv, const char *program) {
    __wasi_fd_t root = argc < 2 ? (__wasi_fd_t)-1 : find_preopen(argv[1]);
    if (root == (__wasi_fd_t)-1) {
        fprintf(stderr, "usage: %s <dir>, a preopened directory\n", program);
        exit(2);
    }
    return root;
}

/* The rights the WASI testsuite's create_tmp_dir asks for a scratch directory. */
#define SCRATCH_BASE                                                                                      \
    (__WASI_RIGHTS_FD_FILESTAT_GET | __WASI_RIGHTS_FD_READDIR | __WASI_RIGHTS_PATH_CREATE_FILE |          \
     __WASI_RIGHTS_PATH_CREATE_DIRECTORY | __WASI_RIGHTS_PATH_REMOVE_DIRECTORY | __WASI_RIGHTS_PATH_OPEN | \
     __WASI_RIGHTS_PATH_UNLINK_FILE | __WASI_RIGHTS_PATH_LINK_SOURCE | __WASI_RIGHTS_PATH_LINK_TARGET |   \
     __WASI_RIGHTS_PATH_READLINK | __WASI_RIGHTS_PATH_RENAME_SOURCE | __WASI_RIGHTS_PATH_RENAME_TARGET |  \
     __WASI_RIGHTS_PATH_FILESTAT_GET | __WASI_RIGHTS_PATH_FILESTAT_SET_SIZE |                             \
     __WASI_RIGHTS_PATH_FILESTAT_SET_TIMES | __WASI_RIGHTS_PATH_SYMLINK)
#define SCRATCH_INHERITING                                                                                \
    (__WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_WRITE | __WASI_RIGHTS_FD_READDIR |                          \
     __WASI_RIGHTS_FD_FILESTAT_GET | __WASI_RIGHTS_FD_SEEK | __WASI_RIGHTS_PATH_LINK_SOURCE |             \
     __WASI_RIGHTS_PATH_LINK_TARGET | __WASI_RIGHTS_PATH_OPEN | __WASI_RIGHTS_PATH_UNLINK_FILE |          \
     __WASI_RIGHTS_PATH_FILESTAT_GET | __WASI_RIGHTS_FD_FDSTAT_SET_FLAGS | __WASI_RIGHTS_FD_SYNC |        \
     __WASI_RIGHTS_FD_TELL | __WASI_RIGHTS_FD_ADVISE | __WASI_RIGHTS_FD_ALLOCATE |                        \
     __WASI_RIGHTS_FD_FILESTAT_SET_SIZE | __WASI_RIGHTS_FD_FILESTAT_SET_TIMES)

/* Make and open `name` beneath the preopen `root` as the testsuite's create_tmp_dir does. */
static __wasi_fd_t scratch_dir(__wasi_fd_t root, const char *name) {
    __wasi_fd_t fd = (__wasi_fd_t)-1;
    __wasi_errno_t err = __wasi_path_create_directory(root, name);
    if (err == 0)
        err = __wasi_path_open(root, 0, name, __WASI_OFLAGS_DIRECTORY, SCRATCH_BASE, SCRATCH_INHERITING, 0, &fd);
    char what[96];
    snprintf(what, sizeof what, "scratch %s", name);
    step(what, err, "");
    return err == 0 ? fd : (__wasi_fd_t)-1;
}

static __wasi_errno_t touch(__wasi_fd_t dir, const char *name) {
    __wasi_fd_t fd;
    __wasi_errno_t err = __wasi_path_open(dir, 0, name, __WASI_OFLAGS_CREAT, 0, 0, 0, &fd);
    return err != 0 ? err : __wasi_fd_close(fd);
}

static __wasi_errno_t write_bytes(__wasi_fd_t fd, const void *data, size_t len, __wasi_size_t *done) {
    __wasi_ciovec_t iov = {.buf = (const uint8_t *)data, .buf_len = len};
    return __wasi_fd_write(fd, &iov, 1, done);
}

static __wasi_errno_t read_bytes(__wasi_fd_t fd, void *buf, size_t len, __wasi_size_t *done) {
    __wasi_iovec_t iov = {.buf = (uint8_t *)buf, .buf_len = len};
    return __wasi_fd_read(fd, &iov, 1, done);
}
