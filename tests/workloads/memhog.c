/* memhog: "memhog <MiB>" allocates that many MiB in 1 MiB blocks with malloc,
 * writing to every 4 KiB page of each block so the memory is really used.
 * Prints "allocated <n> MiB" after every 64 MiB and "done <n>" at the end
 * (each line flushed). If malloc returns NULL it prints
 * "malloc failed at <n> MiB" (n = MiB allocated so far) and exits 3. */
#include <stdio.h>
#include <stdlib.h>

#define MIB (1024 * 1024)
#define PAGE 4096

int main(int argc, char **argv) {
    long want = argc > 1 ? atol(argv[1]) : 64;
    long n;
    for (n = 0; n < want; n++) {
        volatile unsigned char *block = malloc(MIB);
        if (!block) {
            printf("malloc failed at %ld MiB\n", n);
            fflush(stdout);
            return 3;
        }
        for (long off = 0; off < MIB; off += PAGE) block[off] = (unsigned char)(n + off);
        if ((n + 1) % 64 == 0) {
            printf("allocated %ld MiB\n", n + 1);
            fflush(stdout);
        }
    }
    printf("done %ld\n", n);
    fflush(stdout);
    return 0;
}
