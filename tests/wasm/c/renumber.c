/*
 * fd_renumber's edges, one line each, "<case> <errno> <detail>", for renumber.py's adapter:
 *   onto-open     both open: the source replaces the target (0), the source is closed after
 *   onto-closed   a target closed by the guest: 0, and the data written there lands in the file
 *   never-used    a target number never handed out (40): 0
 *   same          source == target: 0, still open
 *   closed-source the source is not open: EBADF (8), whatever the target
 *   far-target    a target at 5000 (beyond the adapter's bound): EBADF (8), source still open
 *   opens-after   a plain open after all that still works
 * Files are created in DIR (argv[1]). Exits 0.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <wasi/api.h>

static char dir[200];

static int file(const char *name) {
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
}

static int is_open(int fd) {
    __wasi_fdstat_t st;
    return __wasi_fd_fdstat_get(fd, &st) == 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: renumber DIR\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);

    int a = file("a"), b = file("b");
    int e = __wasi_fd_renumber(a, b);
    printf("onto-open %d source-open=%d\n", e, is_open(a));

    int c = file("c"), d = file("d");
    close(d);
    e = __wasi_fd_renumber(c, d);
    int n = write(d, "landed\n", 7);
    char buf[16] = {0};
    lseek(d, 0, SEEK_SET);
    int r = read(d, buf, sizeof buf - 1);
    buf[strcspn(buf, "\n")] = 0;
    printf("onto-closed %d wrote=%d read=%d text=%s\n", e, n, r, buf);

    int f = file("f");
    e = __wasi_fd_renumber(f, 40);
    printf("never-used %d target-open=%d source-open=%d\n", e, is_open(40), is_open(f));

    e = __wasi_fd_renumber(40, 40);
    printf("same %d open=%d\n", e, is_open(40));

    e = __wasi_fd_renumber(1000, 41);
    printf("closed-source %d target-open=%d\n", e, is_open(41));

    int g = file("g");
    e = __wasi_fd_renumber(g, 5000);
    printf("far-target %d source-open=%d\n", e, is_open(g));

    int h = file("h");
    printf("opens-after %d\n", h >= 0 && is_open(h));
    return 0;
}
