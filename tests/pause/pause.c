/*
 * The pod sandbox ("pause") process for the CRI test bed.
 *
 * It holds the pod's namespaces open for as long as the pod lives, so it must do nothing but
 * wait: it exits 0 on SIGTERM or SIGINT (what StopPodSandbox sends), and, being PID 1 of the
 * pod when the pod shares a PID namespace, it reaps every child that gets reparented to it so
 * no zombie outlives its container. Built statically so the image needs no libc.
 */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) {
    if (sig != SIGCHLD) {
        stop_signal = sig;
    }
}

static void reap(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        static const char version[] = "testbed-pause 1\n";
        return write(STDOUT_FILENO, version, sizeof version - 1) < 0;
    }
    /* The signals stay blocked except inside sigsuspend(), so one arriving between the test
     * of stop_signal and the wait cannot be lost. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGCHLD);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);

    while (!stop_signal) {
        reap();
        sigsuspend(&waiting);
    }
    reap();
    return 0;
}
