/* Says whether its stdio is a terminal (wasi-libc's isatty: fd_fdstat_get's filetype is
 * CHARACTER_DEVICE, without the rights to seek or tell), then echoes each line it reads
 * with a prefix until EOF, says "bye" and exits 3: a status no other path gives. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    char line[1024];
    printf("isatty 0=%d 1=%d 2=%d\n", isatty(0), isatty(1), isatty(2));
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        printf("echo: %s\n", line);
        fflush(stdout);
    }
    fprintf(stderr, "bye\n");
    return 3;
}
