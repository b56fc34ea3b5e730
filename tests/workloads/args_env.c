/* args_env: prints each argv entry as "argv[i]=<value>", then each environment
 * entry as "env:<KEY=VALUE>", in the order the runtime gives them. Exits 0. */
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = environ; e && *e; e++) printf("env:%s\n", *e);
    return 0;
}
