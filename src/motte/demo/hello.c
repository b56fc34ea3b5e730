/* motte's demo workload, shipped prebuilt as hello.wasm beside this file.
 *
 * Prints a greeting, its arguments, whether the keep passed it file
 * descriptors (the FD_COUNT environment variable), and the SHA-256 of a
 * short string computed inside the sandbox, so you can check the keep ran real
 * code: sha256("motte") is
 * 67b15ce0fff822e3ebf5cdfaa5b6fced1d8c40ade81e8a35dca298a9ea5d49bc.
 *
 * Rebuild: see README.md beside this file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"

int main(int argc, char **argv) {
    printf("Hello from a motte keep!\n");
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    const char *fd_count = getenv("FD_COUNT");
    if (fd_count)
        printf("FD_COUNT is set: %s\n", fd_count);
    else
        printf("FD_COUNT is not set\n");

    static const char text[] = "motte";
    sha256_ctx ctx;
    uint8_t digest[32];
    sha256_init(&ctx);
    sha256_update(&ctx, (const uint8_t *)text, strlen(text));
    sha256_final(&ctx, digest);
    printf("sha256(\"%s\")=", text);
    for (int i = 0; i < 32; i++) printf("%02x", digest[i]);
    printf("\n");
    return 0;
}
