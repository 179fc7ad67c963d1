/*
 * A busybox-style native sidecar for the CRI test bed: a static Linux program, no libc needed
 * in its image.
 *
 * It writes one line to stdout (its arguments joined by spaces, or "sidecar up"), one line to
 * stderr, and a line naming its network namespace ("netns net:[4026531992]") so tests can
 * compare namespaces. Then:
 *   SIDECAR_EXIT=<n>      exit with status n right away;
 *   otherwise             wait; on SIGTERM or SIGINT print "sidecar: stopping on signal <n>"
 *                         and exit 0;
 *   SIDECAR_IGNORE_TERM=1 ignore SIGTERM, so only SIGKILL stops it (tests the escalation).
 * SIDECAR_TICK_MS=<ms> (optional) prints "tick <i>" every ms milliseconds while waiting.
 * As an exec process, `/sidecar --once N WORDS...` prints "once WORDS... tty=<isatty(0)>
 * <isatty(1)>" to stdout (on a terminal, then " size=<columns>x<rows>" once the terminal has
 * a size, waiting up to 5 s for the client's first resize) and "once: stderr" to stderr,
 * and exits N.
 */
#include <sys/ioctl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && strcmp(argv[1], "--once") == 0) {
        printf("once");
        for (int i = 3; i < argc; i++) {
            printf(" %s", argv[i]);
        }
        printf(" tty=%d%d", isatty(0), isatty(1));
        struct winsize ws = {0};
        for (int i = 0; isatty(1) && i < 500 && ws.ws_col == 0; i++) {
            if (ioctl(1, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0) {
                usleep(10000);
            }
        }
        if (ws.ws_col != 0) {
            printf(" size=%dx%d", ws.ws_col, ws.ws_row);
        }
        printf("\n");
        fprintf(stderr, "once: stderr\n");
        return atoi(argv[2]);
    }
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            printf("%s%s", argv[i], i + 1 < argc ? " " : "\n");
        }
    } else {
        printf("sidecar up\n");
    }
    fprintf(stderr, "sidecar: this line goes to stderr\n");

    char netns[64] = "?";
    ssize_t n = readlink("/proc/self/ns/net", netns, sizeof netns - 1);
    if (n > 0) {
        netns[n] = '\0';
    }
    printf("netns %s\n", netns);

    const char *exit_code = getenv("SIDECAR_EXIT");
    if (exit_code != NULL) {
        return atoi(exit_code);
    }

    /* SIGTERM/SIGINT stay blocked except while waiting, so none is lost between the test of
     * stop_signal and the wait. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, NULL);
    const char *ignore = getenv("SIDECAR_IGNORE_TERM");
    sa.sa_handler = ignore != NULL && strcmp(ignore, "1") == 0 ? SIG_IGN : on_stop;
    sigaction(SIGTERM, &sa, NULL);

    const char *tick = getenv("SIDECAR_TICK_MS");
    long tick_ms = tick != NULL ? atol(tick) : 0;
    for (long i = 0; !stop_signal; i++) {
        if (tick_ms > 0) {
            struct timespec ts = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
            sigprocmask(SIG_SETMASK, &waiting, NULL);
            nanosleep(&ts, NULL);
            sigprocmask(SIG_BLOCK, &blocked, NULL);
            if (!stop_signal) {
                printf("tick %ld\n", i);
            }
        } else {
            sigsuspend(&waiting);
        }
    }
    printf("sidecar: stopping on signal %d\n", (int)stop_signal);
    return 0;
}
