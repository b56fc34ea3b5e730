/* stdin_lines: reads stdin with fgets and prints "line <i>: <text>" for each
 * line (i counts from 1; the trailing newline is not repeated), then "eof".
 * Lines longer than 4095 bytes come out in pieces. Exits 0. */
#include <stdio.h>
#include <string.h>

int main(void) {
    char line[4096];
    int i = 0;
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        printf("line %d: %s\n", ++i, line);
    }
    fputs("eof\n", stdout);
    return 0;
}
