/* spin: burns CPU forever; the volatile counter keeps the loop from being
 * optimised away. With "--print" it first prints "spinning" (flushed), so a
 * test knows the guest is running before it interrupts it. */
#include <stdio.h>
#include <string.h>

static volatile unsigned long long counter;

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--print") == 0) {
        fputs("spinning\n", stdout);
        fflush(stdout);
    }
    for (;;) counter++;
}
