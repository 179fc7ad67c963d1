/* Prints every environment variable, one NAME=value per line, in the order received. */
#include <stdio.h>

extern char **environ;

int main(void) {
    for (char **e = environ; e && *e; e++) {
        printf("%s\n", *e);
    }
    return 0;
}
