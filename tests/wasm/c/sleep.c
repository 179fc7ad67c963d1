/* Sleeps argv[1] seconds (default 3600) with nanosleep (WASI poll_oneoff), then prints "slept". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long seconds = argc > 1 ? atol(argv[1]) : 3600;
    printf("sleeping %ld\n", seconds);
    fflush(stdout);
    struct timespec ts = {.tv_sec = seconds, .tv_nsec = 0};
    if (nanosleep(&ts, NULL) != 0) {
        perror("nanosleep");
        return 1;
    }
    printf("slept\n");
    return 0;
}
