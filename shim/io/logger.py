"""The ``binary://`` logging protocol: a logger process that reads a container's output.

The contract, as containerd's runc shim implements it (``NewBinaryIO``/``NewBinaryCmd``):

- argv is ``[path, k1, v1, k2, v2, ...]`` from the URI's query;
- the environment is exactly ``CONTAINER_ID`` and ``CONTAINER_NAMESPACE`` (nothing inherited);
- fd 3 is the read end of the stdout pipe, fd 4 of the stderr pipe, fd 5 the write end of a
  "ready" pipe; 0, 1 and 2 are ``/dev/null``;
- the shim waits until the logger writes a byte on fd 5 or closes it (``binary-v2`` insists on
  the byte). Upstream waits forever; we wait ``ready_timeout`` and fail Create past it.

The logger sees EOF on fds 3/4 once the container and the shim have closed their write ends;
stop() then waits for it to exit on its own before signalling it.

The process is spawned with posix_spawn (vfork-like, safe in a threaded daemon) and tracked
through a pidfd, so signalling it never hits a recycled pid. It is the daemon's own child:
stop() reaps it (``waitid(P_PIDFD)`` once the pidfd polls readable). A logger that exited long
before stop() (its container ended, the task is not deleted yet) may have been reaped already
by the daemon's reaper, which collects zombie children nobody waited for after a grace
period (shim/proc/reaper.py); stop() then finds it gone, which is fine. A logger still alive
5 s after SIGKILL (uninterruptible sleep) is left unreaped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import time

from shim.errors import DeadlineExceeded, FailedPrecondition
from shim.io.fds import close_quietly, os_error, pipe
from shim.io.uri import Target

_TERM_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when the logger outlives EOF


class BinaryLogger:
    """A running logger; ``stdout_fd``/``stderr_fd`` are the write ends for the child."""

    def __init__(self, pid: int, pidfd: int, stdout_fd: int, stderr_fd: int, path: str) -> None:
        self.pid = pid
        self.path = path
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self._pidfd = pidfd

    @classmethod
    def start(
        cls, target: Target, *, container_id: str, namespace: str, ready_timeout: float
    ) -> BinaryLogger:
        """Spawn the logger and wait (at most ``ready_timeout`` s) until it is ready.

        Raises NotFound / PermissionDenied naming the binary when it cannot be executed,
        DeadlineExceeded when it does not signal readiness in time, FailedPrecondition when a
        ``binary-v2`` logger closes fd 5 without writing. Nothing stays open on failure.
        """
        opened: list[int] = []
        pidfd = -1
        pid = 0
        try:
            out_r, out_w = pipe()
            opened += [out_r, out_w]
            err_r, err_w = pipe()
            opened += [err_r, err_w]
            ready_r, ready_w = pipe()
            opened += [ready_r, ready_w]
            pid = _spawn(target, container_id, namespace, (out_r, err_r, ready_w))
            pidfd = os.pidfd_open(pid)
            for fd in (out_r, err_r, ready_w):  # the logger has its own copies now
                opened.remove(fd)
                os.close(fd)
            _wait_ready(target, ready_r, pidfd, ready_timeout)
            opened.remove(ready_r)
            os.close(ready_r)
            return cls(pid, pidfd, out_w, err_w, target.path)
        except BaseException:
            for fd in opened:
                close_quietly(fd)
            if pidfd >= 0:
                _kill_and_reap(pidfd)
                os.close(pidfd)
            raise

    def release_child_fds(self) -> None:
        """Close our write ends once the child has its own: the logger's EOF follows its exit."""
        for name in ("stdout_fd", "stderr_fd"):
            fd = getattr(self, name)
            setattr(self, name, -1)
            close_quietly(fd)

    def stop(self, timeout: float) -> None:
        """EOF to the logger, wait up to ``timeout`` s for it to exit, then SIGTERM, then
        SIGKILL. Idempotent."""
        self.release_child_fds()
        if self._pidfd < 0:
            return
        if not _wait_exit(self._pidfd, timeout):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGTERM)
            if not _wait_exit(self._pidfd, min(_TERM_GRACE, timeout)):
                _kill_and_reap(self._pidfd)
        _reap(self._pidfd)
        pidfd, self._pidfd = self._pidfd, -1
        os.close(pidfd)


def _spawn(target: Target, container_id: str, namespace: str, fds: tuple[int, int, int]) -> int:
    """posix_spawn the logger with ``fds`` as its 3, 4, 5. Returns the pid."""
    # Move the sources above 5 first so that no dup2() can clobber a source not yet copied.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
    actions: list[tuple[int | str, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]
    actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(high)]
    env = {"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace}
    try:
        return os.posix_spawn(
            target.path,
            [target.path, *target.args],
            env,
            file_actions=actions,
            setsigmask=(),
            # Python ignores SIGPIPE; an ignored signal survives exec, so restore the default.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        raise os_error(exc, "start logging binary", target.path) from exc
    finally:
        for fd in high:
            os.close(fd)


def _wait_ready(target: Target, ready_r: int, pidfd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(ready_r, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"logging binary {target.path!r} did not signal ready on fd 5 within {timeout:g}s"
            )
        if poller.poll(remaining * 1000):
            break
    if os.read(ready_r, 1) == b"" and target.ready_byte:
        raise FailedPrecondition(
            f"logging binary {target.path!r} closed fd 5 without signalling ready "
            "(it may have crashed or exited early)"
        )


def _wait_exit(pidfd: int, timeout: float) -> bool:
    """True once the process has exited (the pidfd polls readable), within ``timeout`` s."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        if poller.poll(remaining * 1000):
            return True
        if remaining == 0:
            return False


def _kill_and_reap(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    _wait_exit(pidfd, 5.0)  # SIGKILL is not deferrable; bounded only against D state
    _reap(pidfd)


def _reap(pidfd: int) -> None:
    """Collect the zombie if it is one; nothing when it is still running or already reaped."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
