/*
 * File access through WASI preopens:
 *   files read PATH          print the file's content
 *   files write PATH TEXT    create/truncate PATH and write TEXT
 *   files append PATH TEXT   append TEXT to PATH
 *   files list DIR           print the directory's entries, sorted, one per line
 *   files mkdir DIR          create a directory
 *   files rm PATH            remove a file
 *   files symlink TARGET PATH  create a symbolic link PATH -> TARGET
 *   files link OLD NEW       create a hard link NEW to OLD
 *   files rename OLD NEW     rename OLD to NEW
 *   files keep PATH TEXT     write TEXT to PATH, then sleep for an hour (a running init
 *                            whose file an exec process reads)
 * Errors go to stderr as "files: OP PATH: <strerror>" and exit 1; bad usage exits 2.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *op, const char *path) {
    fprintf(stderr, "files: %s %s: %s\n", op, path, strerror(errno));
    return 1;
}

static int do_read(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return fail("read", path);
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        fwrite(buf, 1, n, stdout);
    }
    int bad = ferror(f);
    fclose(f);
    return bad ? fail("read", path) : 0;
}

static int do_write(const char *path, const char *text, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) {
        return fail(mode[0] == 'a' ? "append" : "write", path);
    }
    size_t len = strlen(text);
    if (fwrite(text, 1, len, f) != len || fclose(f) != 0) {
        return fail("write", path);
    }
    return 0;
}

static int compare(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int do_list(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        return fail("list", path);
    }
    char **names = NULL;
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        names = realloc(names, (count + 1) * sizeof *names);
        names[count++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof *names, compare);
    for (size_t i = 0; i < count; i++) {
        printf("%s\n", names[i]);
        free(names[i]);
    }
    free(names);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "read") == 0) {
        return do_read(argv[2]);
    }
    if (argc == 4 && strcmp(argv[1], "write") == 0) {
        return do_write(argv[2], argv[3], "wb");
    }
    if (argc == 4 && strcmp(argv[1], "keep") == 0) {
        int rc = do_write(argv[2], argv[3], "wb");
        if (rc != 0) {
            return rc;
        }
        struct timespec ts = {.tv_sec = 3600, .tv_nsec = 0};
        nanosleep(&ts, NULL);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "append") == 0) {
        return do_write(argv[2], argv[3], "ab");
    }
    if (argc == 3 && strcmp(argv[1], "list") == 0) {
        return do_list(argv[2]);
    }
    if (argc == 3 && strcmp(argv[1], "mkdir") == 0) {
        return mkdir(argv[2], 0755) == 0 ? 0 : fail("mkdir", argv[2]);
    }
    if (argc == 3 && strcmp(argv[1], "rm") == 0) {
        return unlink(argv[2]) == 0 ? 0 : fail("rm", argv[2]);
    }
    if (argc == 4 && strcmp(argv[1], "symlink") == 0) {
        return symlink(argv[2], argv[3]) == 0 ? 0 : fail("symlink", argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "link") == 0) {
        return link(argv[2], argv[3]) == 0 ? 0 : fail("link", argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "rename") == 0) {
        return rename(argv[2], argv[3]) == 0 ? 0 : fail("rename", argv[2]);
    }
    fprintf(stderr, "usage: files read|write|keep|append|list|mkdir|rm|symlink|link|rename ARGS\n");
    return 2;
}
