/* hello: the smallest C workload. Prints one line, exits 0. */
#include <stdio.h>

int main(void) {
    fputs("Hello from a motte keep!\n", stdout);
    return 0;
}
