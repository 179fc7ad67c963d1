/* Prints "spinning" and then busy-loops forever without any syscall: only a kill stops it. */
#include <stdio.h>

int main(void) {
    printf("spinning\n");
    fflush(stdout);
    volatile unsigned long counter = 0;
    for (;;) {
        counter++;
    }
}
