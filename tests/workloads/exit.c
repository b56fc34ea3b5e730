/* exit: "exit <n>" exits with status n through exit() (WASI proc_exit);
 * "exit abort" calls abort(), which is a wasm trap (unreachable). No argument
 * exits 0. Prints nothing. */
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "abort") == 0) abort();
    exit(argc > 1 ? atoi(argv[1]) : 0);
}
