/* Prints a greeting and its argv; exits with argv[1] (a number) when given. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    printf("hello from wasm\n");
    for (int i = 0; i < argc; i++) {
        printf("argv[%d]=%s\n", i, argv[i]);
    }
    fflush(stdout);
    return argc > 1 ? atoi(argv[1]) : 0;
}
