/* secrets: for each path in argv[1..], prints "<path>: <contents>" (or "<path>: errno=<n>"),
 * then "write <path>: errno=<n>" for an attempt to open it for writing, which must fail.
 * Finally lists the directory of the first path: "list: <names, comma-separated, no . and ..>".
 * Exits 0. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char buf[4096];
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) {
            printf("%s: errno=%d\n", argv[i], errno);
        } else {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            buf[n < 0 ? 0 : n] = 0;
            printf("%s: %s\n", argv[i], buf);
            close(fd);
        }
        int w = open(argv[i], O_WRONLY);
        printf("write %s: errno=%d\n", argv[i], w < 0 ? errno : 0);
    }
    if (argc > 1) {
        char path[1024];
        strncpy(path, argv[1], sizeof path - 1);
        path[sizeof path - 1] = 0;
        DIR *dir = opendir(dirname(path));
        printf("list: ");
        struct dirent *entry;
        int first = 1;
        while (dir && (entry = readdir(dir))) {
            if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
            printf("%s%s", first ? "" : ",", entry->d_name);
            first = 0;
        }
        printf("\n");
    }
    return 0;
}
