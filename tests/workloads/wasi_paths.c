/* wasi_paths: "wasi_paths <dir>" checks paths with trailing slashes, pwrite on
 * an O_APPEND file, directory listings across fd_renumber, and path calls on
 * an fd that is no directory, in the preopened directory <dir> (a guest path,
 * e.g. "/data"). One line per step (see wasi_steps.h): the steps of the WASI
 * testsuite's unlink_file_trailing_slashes, remove_directory_trailing_slashes,
 * path_symlink_trailing_slashes, path_link, path_rename_dir_trailing_slashes,
 * interesting_paths and pwrite-with-append tests, then the rest. Everything is
 * made in <dir>/paths.w, removed at the end. Exit 0 when every step ran; 2 on
 * bad arguments. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "wasi_steps.h"

static void unlink_and_rmdir(__wasi_fd_t dir) {
    step("mkdir dir", __wasi_path_create_directory(dir, "dir"), "");
    step("unlink dir", __wasi_path_unlink_file(dir, "dir"), "");
    step("unlink dir/", __wasi_path_unlink_file(dir, "dir/"), "");
    step("rmdir dir/", __wasi_path_remove_directory(dir, "dir/"), "");
    (void)__wasi_path_remove_directory(dir, "dir");
    step("create file", touch(dir, "file"), "");
    step("unlink file/", __wasi_path_unlink_file(dir, "file/"), "");
    step("rmdir file", __wasi_path_remove_directory(dir, "file"), "");
    step("rmdir file/", __wasi_path_remove_directory(dir, "file/"), "");
    step("unlink file", __wasi_path_unlink_file(dir, "file"), "");
}

static void symlinks(__wasi_fd_t dir) {
    step("symlink to target/ (dangling)", __wasi_path_symlink("source", dir, "target/"), "");
    step("symlink to target (dangling)", __wasi_path_symlink("source", dir, "target"), "");
    (void)__wasi_path_unlink_file(dir, "target");
    step("mkdir target", __wasi_path_create_directory(dir, "target"), "");
    step("symlink onto a dir as target/", __wasi_path_symlink("source", dir, "target/"), "");
    step("symlink onto a dir as target", __wasi_path_symlink("source", dir, "target"), "");
    (void)__wasi_path_remove_directory(dir, "target");
    step("create target", touch(dir, "target"), "");
    step("symlink onto a file as target/", __wasi_path_symlink("source", dir, "target/"), "");
    step("symlink onto a file as target", __wasi_path_symlink("source", dir, "target"), "");
    step("unlink target", __wasi_path_unlink_file(dir, "target"), "");
}

static void links(__wasi_fd_t dir) {
    step("create file to link", touch(dir, "file"), "");
    step("link file to link/", __wasi_path_link(dir, 0, "file", dir, "link/"), "");
    step("link file/ to link", __wasi_path_link(dir, 0, "file/", dir, "link"), "");
    step("link file to itself", __wasi_path_link(dir, 0, "file", dir, "file"), "");
    step("mkdir link", __wasi_path_create_directory(dir, "link"), "");
    step("link file onto a dir", __wasi_path_link(dir, 0, "file", dir, "link"), "");
    (void)__wasi_path_remove_directory(dir, "link");
    step("mkdir subdir", __wasi_path_create_directory(dir, "subdir"), "");
    step("link a dir", __wasi_path_link(dir, 0, "subdir", dir, "link"), "");
    step("link subdir/", __wasi_path_link(dir, 0, "subdir/", dir, "link"), "");
    (void)__wasi_path_remove_directory(dir, "subdir");
    step("symlink dangling", __wasi_path_symlink("target", dir, "symlink"), "");
    step("link a dangling symlink", __wasi_path_link(dir, 0, "symlink", dir, "link"), "");
    (void)__wasi_path_unlink_file(dir, "link");
    step("link onto a dangling symlink", __wasi_path_link(dir, 0, "file", dir, "symlink"), "");
    step("link following a dangling symlink",
         __wasi_path_link(dir, __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, "symlink", dir, "link"), "");
    (void)__wasi_path_unlink_file(dir, "symlink");
    step("unlink the linked file", __wasi_path_unlink_file(dir, "file"), "");
}

static void renames(__wasi_fd_t dir) {
    step("mkdir source", __wasi_path_create_directory(dir, "source"), "");
    step("rename source/ to target", __wasi_path_rename(dir, "source/", dir, "target"), "");
    step("rename target to source/", __wasi_path_rename(dir, "target", dir, "source/"), "");
    step("rename source/ to target/", __wasi_path_rename(dir, "source/", dir, "target/"), "");
    step("rename target to source", __wasi_path_rename(dir, "target", dir, "source"), "");
    (void)__wasi_path_remove_directory(dir, "source");
    step("create file to rename", touch(dir, "file"), "");
    step("rename file/ to other", __wasi_path_rename(dir, "file/", dir, "other"), "");
    step("rename file to other/", __wasi_path_rename(dir, "file", dir, "other/"), "");
    step("unlink the file not renamed", __wasi_path_unlink_file(dir, "file"), "");
}

static void opens(__wasi_fd_t dir) {
    __wasi_fd_t fd;
    __wasi_filestat_t st;
    step("mkdir nested", __wasi_path_create_directory(dir, "nested"), "");
    step("create nested/file", touch(dir, "nested/file"), "");
    const char *paths[] = {"nested/file/", "nested/file///", "nested/", "nested///", "/nested/file",
                           "nested/.//../nested/./file", "nested/../../x"};
    char name[64];
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        __wasi_errno_t err = __wasi_path_open(dir, 0, paths[i], 0, 0, 0, 0, &fd);
        snprintf(name, sizeof name, "open %s", paths[i]);
        step(name, err, "");
        if (err == 0)
            (void)__wasi_fd_close(fd);
    }
    step("stat nested/file/", __wasi_path_filestat_get(dir, 0, "nested/file/", &st), "");
    step("create nested/new/", __wasi_path_open(dir, 0, "nested/new/", __WASI_OFLAGS_CREAT, 0, 0, 0, &fd), "");
    step("unlink nested/file", __wasi_path_unlink_file(dir, "nested/file"), "");
    step("rmdir nested", __wasi_path_remove_directory(dir, "nested"), "");
}

/* pwrite-with-append: POSIX writes at the offset, Linux appends; either will do. */
static void append(const char *root) {
    char path[256], buf[4] = {0};
    snprintf(path, sizeof path, "%s/paths.w/append.txt", root);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0644);
    step("open O_APPEND", fd < 0 ? errno : 0, "");
    say("write 2", "n=%llu", write(fd, buf, 2));
    say("seek to 0", "%llu", lseek(fd, 0, SEEK_SET));
    say("write 2 more", "n=%llu", write(fd, buf, 2));
    say("offset", "%llu", lseek(fd, 0, SEEK_CUR));
    ssize_t n = pwrite(fd, buf, 3, 0);
    step("pwrite 3 at 0", n < 0 ? errno : 0, "");
    say("offset after pwrite", "%llu", lseek(fd, 0, SEEK_CUR));
    say("size after pwrite", "%llu", lseek(fd, 0, SEEK_END));
    close(fd);
    FILE *file = fopen(path, "w+");
    step("fopen w+", file == NULL ? errno : 0, "");
    fclose(file);
    file = fopen(path, "a+");
    step("fopen a+", file == NULL ? errno : 0, "");
    say("fwrite 4", "n=%llu", fwrite(buf, 1, 4, file));
    fflush(file);
    n = pwrite(fileno(file), buf, 4, 0);
    step("pwrite 4 at 0", n < 0 ? errno : 0, "");
    say("size after pwrite at 0", "%llu", lseek(fileno(file), 0, SEEK_END));
    fclose(file);
    step("unlink append.txt", unlink(path) == 0 ? 0 : errno, "");
}

/* The entry names one fd_readdir call returns, from `cookie` on, into a buffer of `size` bytes. */
static void list(const char *name, __wasi_fd_t fd, __wasi_dircookie_t cookie, size_t size) {
    uint8_t buf[1024];
    __wasi_size_t used = 0;
    char names[256] = "";
    __wasi_errno_t err = __wasi_fd_readdir(fd, buf, size, cookie, &used);
    for (size_t at = 0; err == 0 && at + sizeof(__wasi_dirent_t) <= used;) {
        __wasi_dirent_t entry;
        memcpy(&entry, buf + at, sizeof entry);
        at += sizeof entry;
        if (at + entry.d_namlen > used)
            break;
        if (!(entry.d_namlen <= 2 && buf[at] == '.')) {
            strncat(names, " ", sizeof names - strlen(names) - 1);
            strncat(names, (const char *)buf + at, entry.d_namlen < 64 ? entry.d_namlen : 64);
        }
        at += entry.d_namlen;
    }
    step(name, err, names[0] == ' ' ? names + 1 : names);
}

static void readdir_renumber(__wasi_fd_t dir) {
    __wasi_fd_t one, two;
    step("mkdir one", __wasi_path_create_directory(dir, "one"), "");
    step("mkdir two", __wasi_path_create_directory(dir, "two"), "");
    step("create one/a1", touch(dir, "one/a1"), "");
    step("create one/a2", touch(dir, "one/a2"), "");
    step("create two/b1", touch(dir, "two/b1"), "");
    step("create two/b2", touch(dir, "two/b2"), "");
    __wasi_rights_t rights = __WASI_RIGHTS_FD_READDIR | __WASI_RIGHTS_PATH_OPEN;
    step("open one", __wasi_path_open(dir, 0, "one", __WASI_OFLAGS_DIRECTORY, rights, 0, 0, &one), "");
    step("open two", __wasi_path_open(dir, 0, "two", __WASI_OFLAGS_DIRECTORY, rights, 0, 0, &two), "");
    list("list one", one, 0, sizeof(__wasi_dirent_t) + 1);
    list("list two", two, 0, sizeof(__wasi_dirent_t) + 1);
    step("renumber one onto two", __wasi_fd_renumber(one, two), "");
    list("list two from cookie 2", two, 2, 1024);
    list("list two from cookie 0", two, 0, 1024);
    (void)__wasi_fd_close(two);
    const char *names[] = {"one/a1", "one/a2", "two/b1", "two/b2"};
    for (size_t i = 0; i < 4; i++)
        (void)__wasi_path_unlink_file(dir, names[i]);
    (void)__wasi_path_remove_directory(dir, "one");
    (void)__wasi_path_remove_directory(dir, "two");
}

static void not_a_directory(__wasi_fd_t dir) {
    __wasi_fd_t fd, opened;
    uint8_t buf[64];
    __wasi_size_t used;
    step("create plain", touch(dir, "plain"), "");
    if (__wasi_path_open(dir, 0, "plain", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd) != 0)
        return;
    step("path_open beneath a file", __wasi_path_open(fd, 0, "x", 0, 0, 0, 0, &opened), "");
    step("path_create_directory beneath a file", __wasi_path_create_directory(fd, "x"), "");
    step("fd_readdir on a file", __wasi_fd_readdir(fd, buf, sizeof buf, 0, &used), "");
    (void)__wasi_fd_close(fd);
    step("unlink plain", __wasi_path_unlink_file(dir, "plain"), "");
}

int main(int argc, char **argv) {
    __wasi_fd_t root = preopen_argument(argc, argv, "wasi_paths");
    __wasi_fd_t dir = scratch_dir(root, "paths.w");
    if (dir == (__wasi_fd_t)-1)
        return 1;
    unlink_and_rmdir(dir);
    symlinks(dir);
    links(dir);
    renames(dir);
    opens(dir);
    append(argv[1]);
    readdir_renumber(dir);
    not_a_directory(dir);
    (void)__wasi_fd_close(dir);
    step("cleaned up", __wasi_path_remove_directory(root, "paths.w"), "");
    return 0;
}
