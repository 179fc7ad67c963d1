/*
 * Redirects its own stdout and stderr into a file and back, with the WASI calls yosys makes
 * around its linked-in ABC (passes/techmap/abc.cc under YOSYS_LINK_ABC):
 *   fd_renumber(1, a); fd_renumber(2, b);   move stdout and stderr out of the way
 *   fd_renumber(w, 1); fd_renumber(w, 2);   the capture file onto 1 (and, failing, onto 2)
 *   ... output that goes to the file ...
 *   fd_renumber(a, 1); fd_renumber(b, 2);   stdout and stderr back
 * where a, b and w are files opened on PATH. The first renumber onto 1 (and the two back)
 * target a descriptor that is closed at that moment: as dup2() allows, and wasmtime before
 * 37 did; wasmtime 37+ answers EBADF, and stdout is lost for good.
 *
 *   redirect PATH LINES   prints "out N" LINES times to stdout and "err N" to stderr after
 *                         the round trip, then what the file captured, then every renumber's
 *                         result; exits 3.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <wasi/api.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: redirect PATH LINES\n");
        return 2;
    }
    const char *path = argv[1];
    int lines = atoi(argv[2]);
    printf("before\n");
    fprintf(stderr, "before (stderr)\n");
    fflush(stdout);
    int w = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int a = open(path, O_RDONLY);
    int b = open(path, O_RDONLY);
    if (w < 0 || a < 0 || b < 0) {
        perror(path);
        return 1;
    }
    int r[6];
    r[0] = __wasi_fd_renumber(1, a);
    r[1] = __wasi_fd_renumber(2, b);
    r[2] = __wasi_fd_renumber(w, 1);
    r[3] = __wasi_fd_renumber(w, 2);
    printf("captured\n");
    fflush(stdout);
    r[4] = __wasi_fd_renumber(a, 1);
    r[5] = __wasi_fd_renumber(b, 2);
    for (int i = 1; i <= lines; i++) {
        printf("out %d\n", i);
        fprintf(stderr, "err %d\n", i);
    }
    FILE *f = fopen(path, "r");
    char buf[256];
    while (f && fgets(buf, sizeof buf, f)) {
        printf("file: %s", buf);
    }
    printf("renumber: %d %d %d %d %d %d\n", r[0], r[1], r[2], r[3], r[4], r[5]);
    return 3;
}
