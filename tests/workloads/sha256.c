/* sha256: "sha256 [MiB]" (default 64) hashes MiB * 1 MiB bytes of generated
 * data with the demo workloads' self-contained SHA-256 (src/motte/demo/sha256.h)
 * and prints "sha256=<64 hex> mib=<n>".
 * Byte i of the stream (i counted from 0 over the whole stream) is
 *     (i * 31 + (i >> 8)) & 0xff
 * produced chunk by chunk in a 64 KiB buffer. tests.workloads.sha256_reference
 * computes the same digest in Python. A CPU benchmark; exits 0. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/motte/demo/sha256.h"

#define CHUNK (64 * 1024)
static uint8_t buf[CHUNK];

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 64;
    if (mib < 0) mib = 0;
    uint64_t total = (uint64_t)mib * 1024 * 1024;
    sha256_ctx ctx;
    sha256_init(&ctx);
    for (uint64_t base = 0; base < total; base += CHUNK) {
        size_t n = total - base < CHUNK ? (size_t)(total - base) : CHUNK;
        for (size_t j = 0; j < n; j++) {
            uint64_t i = base + j;
            buf[j] = (uint8_t)((i * 31 + (i >> 8)) & 0xff);
        }
        sha256_update(&ctx, buf, n);
    }
    uint8_t digest[32];
    sha256_final(&ctx, digest);
    printf("sha256=");
    for (int i = 0; i < 32; i++) printf("%02x", digest[i]);
    printf(" mib=%ld\n", mib);
    return 0;
}
