/* wasi_rights: "wasi_rights <dir>" checks WASI preview1 rights, and what a
 * directory fd does when used as a file, in the preopened directory <dir> (a
 * guest path, e.g. "/data"). One line per step (see wasi_steps.h): the steps
 * of the WASI testsuite's fd_fdstat_set_rights, path_open_read_write,
 * truncation_rights, path_open_preopen, directory_seek and dir_fd_op_failures
 * tests, then narrowing a directory's rights and its inherited rights, then
 * the same through wasi-libc's open(). Everything is made in <dir>/rights.w,
 * removed at the end. Exit 0 when every step ran; 2 on bad arguments. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "wasi_steps.h"

#define READ __WASI_RIGHTS_FD_READ
#define WRITE __WASI_RIGHTS_FD_WRITE
#define SEEK __WASI_RIGHTS_FD_SEEK
#define TELL __WASI_RIGHTS_FD_TELL

/* path_open_preopen.rs: what a preopened directory must at least have. */
#define DIR_BASE                                                                                          \
    (__WASI_RIGHTS_PATH_CREATE_DIRECTORY | __WASI_RIGHTS_PATH_CREATE_FILE | __WASI_RIGHTS_PATH_LINK_SOURCE | \
     __WASI_RIGHTS_PATH_LINK_TARGET | __WASI_RIGHTS_PATH_OPEN | __WASI_RIGHTS_FD_READDIR |                \
     __WASI_RIGHTS_PATH_READLINK | __WASI_RIGHTS_PATH_RENAME_SOURCE | __WASI_RIGHTS_PATH_RENAME_TARGET |  \
     __WASI_RIGHTS_PATH_SYMLINK | __WASI_RIGHTS_PATH_REMOVE_DIRECTORY | __WASI_RIGHTS_PATH_UNLINK_FILE |  \
     __WASI_RIGHTS_PATH_FILESTAT_GET | __WASI_RIGHTS_PATH_FILESTAT_SET_TIMES |                            \
     __WASI_RIGHTS_FD_FILESTAT_GET | __WASI_RIGHTS_FD_FILESTAT_SET_TIMES)
#define DIR_INHERITING                                                                                    \
    (DIR_BASE | __WASI_RIGHTS_FD_DATASYNC | READ | SEEK | __WASI_RIGHTS_FD_FDSTAT_SET_FLAGS |             \
     __WASI_RIGHTS_FD_SYNC | TELL | WRITE | __WASI_RIGHTS_FD_ADVISE | __WASI_RIGHTS_FD_ALLOCATE |         \
     __WASI_RIGHTS_FD_FILESTAT_SET_SIZE | __WASI_RIGHTS_FD_FILESTAT_SET_TIMES |                           \
     __WASI_RIGHTS_POLL_FD_READWRITE)

static __wasi_fdstat_t fdstat_of(__wasi_fd_t fd) {
    __wasi_fdstat_t st = {0};
    if (__wasi_fd_fdstat_get(fd, &st) != 0)
        printf("fdstat of %u failed\n", (unsigned)fd);
    return st;
}

static void show_rw(const char *name, __wasi_fd_t fd) {
    __wasi_fdstat_t st = fdstat_of(fd);
    char details[64];
    snprintf(details, sizeof details, "read=%d write=%d", !!(st.fs_rights_base & READ),
             !!(st.fs_rights_base & WRITE));
    step(name, 0, details);
}

static __wasi_errno_t drop(__wasi_fd_t fd, __wasi_rights_t base, __wasi_rights_t inheriting) {
    __wasi_fdstat_t st = fdstat_of(fd);
    return __wasi_fd_fdstat_set_rights(fd, st.fs_rights_base & ~base, st.fs_rights_inheriting & ~inheriting);
}

static void preopen_rights(__wasi_fd_t root) {
    __wasi_fdstat_t st = fdstat_of(root);
    say("preopen filetype", "%llu", st.fs_filetype);
    say("preopen base has the directory rights", "%llu", (st.fs_rights_base & DIR_BASE) == DIR_BASE);
    say("preopen inheriting has the file rights", "%llu",
        (st.fs_rights_inheriting & DIR_INHERITING) == DIR_INHERITING);
    say("preopen base has no seek or set_size", "%llu",
        (st.fs_rights_base & (SEEK | __WASI_RIGHTS_FD_FILESTAT_SET_SIZE)) == 0);
    __wasi_fd_t fd;
    __wasi_errno_t err = __wasi_path_open(root, 0, ".", 0, st.fs_rights_base, st.fs_rights_inheriting, 0, &fd);
    step("reopen with its own rights", err, "");
    if (err == 0)
        (void)__wasi_fd_close(fd);
    const struct {
        const char *name;
        __wasi_oflags_t oflags;
        __wasi_rights_t base;
    } opens[] = {
        {"reopen with no rights", 0, 0},
        {"reopen O_DIRECTORY with no rights", __WASI_OFLAGS_DIRECTORY, 0},
        {"reopen O_DIRECTORY with read", __WASI_OFLAGS_DIRECTORY, READ},
        {"reopen O_DIRECTORY with read+write", __WASI_OFLAGS_DIRECTORY, READ | WRITE},
    };
    for (size_t i = 0; i < sizeof opens / sizeof opens[0]; i++) {
        err = __wasi_path_open(root, 0, ".", opens[i].oflags, opens[i].base, 0, 0, &fd);
        step(opens[i].name, err, "");
        if (err == 0)
            (void)__wasi_fd_close(fd);
    }
    __wasi_prestat_t prestat;
    (void)__wasi_fd_prestat_get(root, &prestat);
    char name[300];
    step("prestat_dir_name into 0 bytes", __wasi_fd_prestat_dir_name(root, (uint8_t *)name, 0), "");
    step("prestat_dir_name into more than enough",
         __wasi_fd_prestat_dir_name(root, (uint8_t *)name, prestat.u.dir.pr_name_len + 1), "");
}

static void file_rights(__wasi_fd_t dir) {
    __wasi_fd_t fd;
    __wasi_size_t n = 0;
    __wasi_filesize_t pos;
    char buf[8] = {0};
    __wasi_errno_t err = __wasi_path_open(dir, 0, "file", __WASI_OFLAGS_CREAT, READ | WRITE | SEEK | TELL, 0, 0, &fd);
    step("open read+write+seek+tell", err, "");
    if (err != 0)
        return;
    step("write", write_bytes(fd, "\0\1\2\3", 4, &n), "");
    step("seek to 0", __wasi_fd_seek(fd, 0, __WASI_WHENCE_SET, &pos), "");
    err = read_bytes(fd, buf, 4, &n);
    say("read", "n=%llu", n);
    step("drop read and write", drop(fd, READ | WRITE, 0), "");
    __wasi_fdstat_t st = fdstat_of(fd);
    char details[64];
    snprintf(details, sizeof details, "read=%d write=%d seek=%d", !!(st.fs_rights_base & READ),
             !!(st.fs_rights_base & WRITE), !!(st.fs_rights_base & SEEK));
    step("rights after the drop", 0, details);
    step("read without the right", read_bytes(fd, buf, 4, &n), "");
    step("write without the right", write_bytes(fd, "x", 1, &n), "");
    step("pread without the right",
         __wasi_fd_pread(fd, &(__wasi_iovec_t){.buf = (uint8_t *)buf, .buf_len = 4}, 1, 0, &n), "");
    step("regrant", __wasi_fd_fdstat_set_rights(fd, st.fs_rights_base | READ | WRITE,
                                                st.fs_rights_inheriting | READ | WRITE), "");
    step("seek keeps its right", __wasi_fd_seek(fd, 0, __WASI_WHENCE_SET, &pos), "");
    step("drop seek", drop(fd, SEEK, 0), "");
    step("seek without the right", __wasi_fd_seek(fd, 1, __WASI_WHENCE_SET, &pos), "");
    step("tell with its right", __wasi_fd_tell(fd, &pos), "");
    step("drop tell", drop(fd, TELL, 0), "");
    step("tell without the right", __wasi_fd_tell(fd, &pos), "");
    __wasi_filestat_t fst;
    step("drop every right", __wasi_fd_fdstat_set_rights(fd, 0, 0), "");
    step("filestat without the right", __wasi_fd_filestat_get(fd, &fst), "");
    step("set_size without the right", __wasi_fd_filestat_set_size(fd, 0), "");
    step("fdstat needs no right", __wasi_fd_fdstat_get(fd, &st), "");
    step("close needs no right", __wasi_fd_close(fd), "");
    step("unlink file", __wasi_path_unlink_file(dir, "file"), "");
}

static void open_modes(__wasi_fd_t dir) {
    __wasi_fd_t fd;
    __wasi_size_t n = 0;
    char buf[100];
    static const char fifty[50] = {1}, twenty_five[25] = {2};
    step("create mode", touch(dir, "mode"), "");
    if (__wasi_path_open(dir, 0, "mode", 0, READ, 0, 0, &fd) == 0) {
        show_rw("read-only rights", fd);
        step("read-only read", read_bytes(fd, buf, sizeof buf, &n), "");
        step("read-only write", write_bytes(fd, fifty, sizeof fifty, &n), "");
        (void)__wasi_fd_close(fd);
    }
    if (__wasi_path_open(dir, 0, "mode", 0, WRITE, 0, 0, &fd) == 0) {
        show_rw("write-only rights", fd);
        step("write-only read", read_bytes(fd, buf, sizeof buf, &n), "");
        __wasi_errno_t err = write_bytes(fd, fifty, sizeof fifty, &n);
        say("write-only write", "n=%llu", err == 0 ? n : 999);
        (void)__wasi_fd_close(fd);
    }
    if (__wasi_path_open(dir, 0, "mode", 0, READ | WRITE | __WASI_RIGHTS_FD_FILESTAT_GET, 0, 0, &fd) == 0) {
        show_rw("read-write rights", fd);
        __wasi_errno_t err = read_bytes(fd, buf, sizeof buf, &n);
        say("read-write read", "n=%llu", err == 0 ? n : 999);
        step("read-write write", write_bytes(fd, twenty_five, sizeof twenty_five, &n), "");
        __wasi_filestat_t fst = {0};
        err = __wasi_fd_filestat_get(fd, &fst);
        say("read-write size", "%llu", err == 0 ? fst.size : 999);
        (void)__wasi_fd_close(fd);
    }
    if (__wasi_path_open(dir, 0, "mode", 0, 0, 0, 0, &fd) == 0) {
        __wasi_fdstat_t st = fdstat_of(fd);
        say("rights when none are asked", "0x%llx", st.fs_rights_base);
        (void)__wasi_fd_close(fd);
    }
    step("unlink mode", __wasi_path_unlink_file(dir, "mode"), "");
}

/* Directories are opened beneath the preopen `root`: one opened beneath the scratch directory
 * would get no more than its inheriting rights, which do not create files. */
static void truncation(__wasi_fd_t root) {
    __wasi_fd_t dir = scratch_dir(root, "rights.w/trunc");
    __wasi_fd_t fd;
    if (dir == (__wasi_fd_t)-1)
        return;
    step("create trunc/file", touch(dir, "file"), "");
    __wasi_fdstat_t st = fdstat_of(dir);
    char details[96];
    snprintf(details, sizeof details, "type=%u flags=%u fd_set_size=%d path_set_size=%d", st.fs_filetype,
             st.fs_flags, !!(st.fs_rights_base & __WASI_RIGHTS_FD_FILESTAT_SET_SIZE),
             !!(st.fs_rights_base & __WASI_RIGHTS_PATH_FILESTAT_SET_SIZE));
    step("trunc dir", 0, details);
    __wasi_errno_t err = __wasi_path_open(dir, 0, "file", __WASI_OFLAGS_TRUNC, 0, 0, 0, &fd);
    step("truncate", err, "");
    if (err == 0)
        (void)__wasi_fd_close(fd);
    step("drop inherited fd_set_size", drop(dir, 0, __WASI_RIGHTS_FD_FILESTAT_SET_SIZE), "");
    err = __wasi_path_open(dir, 0, "file", __WASI_OFLAGS_TRUNC, 0, 0, 0, &fd);
    step("truncate without fd_set_size", err, "");
    if (err == 0)
        (void)__wasi_fd_close(fd);
    step("drop path_set_size", drop(dir, __WASI_RIGHTS_PATH_FILESTAT_SET_SIZE, 0), "");
    st = fdstat_of(dir);
    say("path_set_size after the drop", "%llu", !!(st.fs_rights_base & __WASI_RIGHTS_PATH_FILESTAT_SET_SIZE));
    err = __wasi_path_open(dir, 0, "file", __WASI_OFLAGS_TRUNC, 0, 0, 0, &fd);
    step("truncate without path_set_size", err, "");
    if (err == 0)
        (void)__wasi_fd_close(fd);
    step("unlink trunc/file", __wasi_path_unlink_file(dir, "file"), "");
    (void)__wasi_fd_close(dir);
    step("rmdir trunc", __wasi_path_remove_directory(root, "rights.w/trunc"), "");
}

/* Beyond the testsuite: every path right of a directory is checked. */
static void dir_rights(__wasi_fd_t root) {
    __wasi_fd_t dir = scratch_dir(root, "rights.w/narrow");
    __wasi_fd_t fd;
    uint8_t buf[256];
    __wasi_size_t n;
    if (dir == (__wasi_fd_t)-1)
        return;
    step("create narrow/old", touch(dir, "old"), "");
    step("drop create_file", drop(dir, __WASI_RIGHTS_PATH_CREATE_FILE, 0), "");
    step("create without the right", __wasi_path_open(dir, 0, "new", __WASI_OFLAGS_CREAT, 0, 0, 0, &fd), "");
    __wasi_errno_t err = __wasi_path_open(dir, 0, "old", 0, READ, 0, 0, &fd);
    step("open an existing file without create_file", err, "");
    if (err == 0)
        (void)__wasi_fd_close(fd);
    step("readdir with its right", __wasi_fd_readdir(dir, buf, sizeof buf, 0, &n), "");
    step("drop readdir", drop(dir, __WASI_RIGHTS_FD_READDIR, 0), "");
    step("readdir without the right", __wasi_fd_readdir(dir, buf, sizeof buf, 0, &n), "");
    step("drop create_directory", drop(dir, __WASI_RIGHTS_PATH_CREATE_DIRECTORY, 0), "");
    step("mkdir without the right", __wasi_path_create_directory(dir, "sub"), "");
    step("drop symlink", drop(dir, __WASI_RIGHTS_PATH_SYMLINK, 0), "");
    step("symlink without the right", __wasi_path_symlink("old", dir, "sym"), "");
    step("drop unlink_file", drop(dir, __WASI_RIGHTS_PATH_UNLINK_FILE, 0), "");
    step("unlink without the right", __wasi_path_unlink_file(dir, "old"), "");
    __wasi_filestat_t fst;
    step("drop path_filestat_get", drop(dir, __WASI_RIGHTS_PATH_FILESTAT_GET, 0), "");
    step("stat a path without the right", __wasi_path_filestat_get(dir, 0, "old", &fst), "");
    step("drop path_open", drop(dir, __WASI_RIGHTS_PATH_OPEN, 0), "");
    step("open without the right", __wasi_path_open(dir, 0, "old", 0, 0, 0, 0, &fd), "");
    (void)__wasi_fd_close(dir);
    step("unlink narrow/old", __wasi_path_unlink_file(root, "rights.w/narrow/old"), "");
    step("rmdir narrow", __wasi_path_remove_directory(root, "rights.w/narrow"), "");
}

/* A file opened beneath a directory gets at most the directory's inheriting rights. */
static void inherited(__wasi_fd_t root) {
    __wasi_fd_t dir, fd;
    __wasi_size_t n;
    step("mkdir inherit", __wasi_path_create_directory(root, "rights.w/inherit"), "");
    __wasi_errno_t err = __wasi_path_open(root, 0, "rights.w/inherit", __WASI_OFLAGS_DIRECTORY, SCRATCH_BASE,
                                          READ | SEEK | TELL | __WASI_RIGHTS_FD_FILESTAT_GET, 0, &dir);
    step("open inherit without inheritable write", err, "");
    if (err != 0)
        return;
    err = __wasi_path_open(dir, 0, "file", __WASI_OFLAGS_CREAT, READ | WRITE, 0, 0, &fd);
    step("open asking for read+write", err, "");
    if (err == 0) {
        show_rw("rights it got", fd);
        step("write through it", write_bytes(fd, "x", 1, &n), "");
        (void)__wasi_fd_close(fd);
    }
    step("unlink inherit/file", __wasi_path_unlink_file(dir, "file"), "");
    (void)__wasi_fd_close(dir);
    step("rmdir inherit", __wasi_path_remove_directory(root, "rights.w/inherit"), "");
}

/* A directory opened beneath the scratch directory gets at most its inheriting rights. */
static void nested(__wasi_fd_t dir) {
    __wasi_fd_t sub;
    step("mkdir sub", __wasi_path_create_directory(dir, "sub"), "");
    __wasi_errno_t err = __wasi_path_open(dir, 0, "sub", __WASI_OFLAGS_DIRECTORY, SCRATCH_BASE, SCRATCH_INHERITING, 0, &sub);
    step("open sub asking for the scratch rights", err, "");
    if (err == 0) {
        __wasi_fdstat_t st = fdstat_of(sub);
        char details[64];
        snprintf(details, sizeof details, "create_file=%d open=%d", !!(st.fs_rights_base & __WASI_RIGHTS_PATH_CREATE_FILE),
                 !!(st.fs_rights_base & __WASI_RIGHTS_PATH_OPEN));
        step("rights sub got", 0, details);
        step("create in sub", touch(sub, "file"), "");
        (void)__wasi_fd_close(sub);
    }
    step("rmdir sub", __wasi_path_remove_directory(dir, "sub"), "");
}

static void dir_as_file(const char *prefix, __wasi_fd_t dir) {
    char name[96];
    uint8_t buf[128] = {0};
    __wasi_iovec_t iov = {.buf = buf, .buf_len = sizeof buf};
    __wasi_ciovec_t ciov = {.buf = buf, .buf_len = sizeof buf};
    __wasi_size_t n;
    __wasi_filesize_t pos;
    __wasi_filestat_t fst = {0};
    struct {
        const char *what;
        __wasi_errno_t err;
    } calls[] = {
        {"fd_read", __wasi_fd_read(dir, &iov, 1, &n)},
        {"fd_pread", __wasi_fd_pread(dir, &iov, 1, 0, &n)},
        {"fd_write", __wasi_fd_write(dir, &ciov, 1, &n)},
        {"fd_pwrite", __wasi_fd_pwrite(dir, &ciov, 1, 0, &n)},
        {"fd_seek cur", __wasi_fd_seek(dir, 0, __WASI_WHENCE_CUR, &pos)},
        {"fd_seek set", __wasi_fd_seek(dir, 0, __WASI_WHENCE_SET, &pos)},
        {"fd_seek end", __wasi_fd_seek(dir, 0, __WASI_WHENCE_END, &pos)},
        {"fd_tell", __wasi_fd_tell(dir, &pos)},
        {"fd_allocate", __wasi_fd_allocate(dir, 0, 1)},
        {"fd_filestat_set_size", __wasi_fd_filestat_set_size(dir, 0)},
        {"fd_filestat_get", __wasi_fd_filestat_get(dir, &fst)},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        snprintf(name, sizeof name, "%s %s", prefix, calls[i].what);
        step(name, calls[i].err, "");
    }
    snprintf(name, sizeof name, "%s filestat filetype", prefix);
    say(name, "%llu", fst.filetype);
}

static void directory_seek(__wasi_fd_t parent) {
    __wasi_fd_t fd;
    __wasi_filesize_t pos;
    step("mkdir seekdir", __wasi_path_create_directory(parent, "seekdir"), "");
    __wasi_errno_t err = __wasi_path_open(parent, 0, "seekdir", __WASI_OFLAGS_DIRECTORY, SEEK, 0, 0, &fd);
    step("open a directory asking for seek", err, "");
    if (err == 0) {
        step("seek on it", __wasi_fd_seek(fd, 0, __WASI_WHENCE_CUR, &pos), "");
        __wasi_fdstat_t st = fdstat_of(fd);
        char details[64];
        snprintf(details, sizeof details, "type=%u seek=%d", st.fs_filetype, !!(st.fs_rights_base & SEEK));
        step("its fdstat", 0, details);
        (void)__wasi_fd_close(fd);
    }
    step("rmdir seekdir", __wasi_path_remove_directory(parent, "seekdir"), "");
}

/* wasi-libc asks path_open for the rights that go with the access mode. */
static void libc_modes(const char *root) {
    char path[256];
    char buf[8];
    snprintf(path, sizeof path, "%s/rights.w/libc.txt", root);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    step("libc open O_WRONLY|O_CREAT", fd < 0 ? errno : 0, "");
    step("libc write on O_WRONLY", write(fd, "abc", 3) == 3 ? 0 : errno, "");
    step("libc read on O_WRONLY", read(fd, buf, 3) >= 0 ? 0 : errno, "");
    close(fd);
    fd = open(path, O_RDONLY);
    step("libc open O_RDONLY", fd < 0 ? errno : 0, "");
    step("libc read on O_RDONLY", read(fd, buf, 3) == 3 ? 0 : errno, "");
    step("libc write on O_RDONLY", write(fd, "x", 1) >= 0 ? 0 : errno, "");
    step("libc ftruncate on O_RDONLY", ftruncate(fd, 0) == 0 ? 0 : errno, "");
    close(fd);
    step("libc unlink", unlink(path) == 0 ? 0 : errno, "");
}

int main(int argc, char **argv) {
    __wasi_fd_t root = preopen_argument(argc, argv, "wasi_rights");
    preopen_rights(root);
    __wasi_fd_t dir = scratch_dir(root, "rights.w");
    if (dir == (__wasi_fd_t)-1)
        return 1;
    file_rights(dir);
    open_modes(dir);
    truncation(root);
    dir_rights(root);
    inherited(root);
    nested(dir);
    dir_as_file("preopen", root);
    __wasi_fd_t reopened;
    __wasi_fdstat_t st = fdstat_of(root);
    if (__wasi_path_open(root, 0, ".", __WASI_OFLAGS_DIRECTORY, st.fs_rights_base, st.fs_rights_inheriting, 0,
                         &reopened) == 0) {
        dir_as_file("reopened", reopened);
        (void)__wasi_fd_close(reopened);
    }
    directory_seek(dir);
    libc_modes(argv[1]);
    (void)__wasi_fd_close(dir);
    step("cleaned up", __wasi_path_remove_directory(root, "rights.w"), "");
    return 0;
}
