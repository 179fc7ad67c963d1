/*
 * Allocates 1 MiB chunks forever, writing to every page so the memory is really used, and
 * prints the running count ("allocated N MiB") after each chunk. When malloc fails it says so
 * and exits 1; under a memory limit the engine may trap first instead.
 */
#include <stdio.h>
#include <stdlib.h>

#define CHUNK (1024 * 1024)

/* Every chunk links to the previous one and the head is volatile: the compiler cannot drop the
 * allocations as unused. */
static void *volatile head;

int main(void) {
    for (unsigned long count = 1;; count++) {
        char *p = malloc(CHUNK);
        if (!p) {
            printf("malloc failed after %lu MiB\n", count - 1);
            return 1;
        }
        for (size_t off = sizeof(void *); off < CHUNK; off += 4096) {
            p[off] = (char)count;
        }
        *(void **)p = head;
        head = p;
        printf("allocated %lu MiB\n", count);
        fflush(stdout);
    }
}
