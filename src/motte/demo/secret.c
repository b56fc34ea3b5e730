/* motte's secret-search demo workload, shipped prebuilt as secret.wasm beside this file.
 *
 * Makes a fresh random secret ("MOTTE-SECRET-" and 32 hex digits), keeps it in its linear
 * memory, and prints only its SHA-256 ("sha256=<hex>"), so the host can recognise the secret if
 * it finds it in the keep's memory without the workload ever revealing it. It then holds the
 * secret until its stdin closes. Rebuild: see README.md beside this file. */
#include <stdio.h>
#include <unistd.h>

#include "sha256.h"

static char secret[64];

int main(void) {
    uint8_t raw[16];
    if (getentropy(raw, sizeof raw) != 0) return 2;
    int n = snprintf(secret, sizeof secret, "MOTTE-SECRET-");
    for (int i = 0; i < 16; i++) n += snprintf(secret + n, sizeof secret - n, "%02x", raw[i]);
    char digest[65];
    sha256_hex((const uint8_t *)secret, (size_t)n, digest);
    printf("sha256=%s\n", digest);
    fflush(stdout);
    char buf[256];
    while (read(0, buf, sizeof buf) > 0) {
    }
    /* Touch the secret after the wait, so the compiler must keep it in memory throughout. */
    volatile char *keep = secret;
    return keep[0] == 'M' ? 0 : 1;
}
