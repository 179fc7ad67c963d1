"""A container process's stdio, as containerd's runc shim provides it.

Create passes three strings and ``terminal``; ``uri.plan`` decides what they mean and this
module opens them, hands three descriptors to whoever forks the process, and releases
everything afterwards. The life cycle:

``ProcessIO.open`` (Create) -> ``child_fds`` (the forker dup2()s them onto 0/1/2) ->
``started`` (our copies of the child's ends are closed, so the child's exit is the client's
EOF) -> ``close_stdin`` (CloseIO, any time) -> ``close`` (after exit / on Delete).

Without a terminal, output goes to the client's FIFO directly, not through a copier: the child
writes into the FIFO, and we hold our own read end of it until ``close`` so that a client that
went away never turns the guest's writes into EPIPE (as in runc, a full FIFO then blocks the
writer instead); with one, the console's pump copies it (below).
Stdin goes through a pipe we own (see ``stdin.py``) because CloseIO must produce EOF.

With ``terminal=true`` the process gets the slave side of a pseudo-terminal as 0, 1 and 2
and the shim copies between the master and the client (``console.py``): ``open`` makes the
pair for a process the shim forks (``pty=True``); for one that runc creates, the process gets
/dev/null from us and runc's master arrives later through ``attach_console``. stderr is
ignored then: containerd sends none, both streams being the terminal.

Every descriptor here is close-on-exec, including the ones returned by ``child_fds``; the
forker's dup2() makes the inheritable 0/1/2 (see ``fds.py`` for why).
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass

from shim.errors import FailedPrecondition, InvalidArgument, NotFound
from shim.io.console import Console, open_pair
from shim.io.fds import close_quietly, kind, open_fd, open_fifo, open_regular, os_error, stat_path
from shim.io.logger import BinaryLogger
from shim.io.stdin import StdinCopier
from shim.io.uri import Plan, Scheme, Target, plan

DEFAULT_READY_TIMEOUT = 10.0  # seconds a binary:// logger gets to signal readiness


@dataclass(frozen=True, slots=True)
class StdioConfig:
    """The stdio part of a Create request, as plain values."""

    stdin: str
    stdout: str
    stderr: str
    terminal: bool = False


class ProcessIO:
    """The descriptors of one process's stdio and everything that keeps them working.

    Thread-safe: Create, CloseIO and Delete may arrive on different threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: list[int] = [-1, -1, -1]  # what the child gets as 0/1/2 (may repeat)
        self._own: list[int] = []  # child-side fds opened here; closed by started()
        self._keep: list[int] = []  # our FIFO read ends (anti-EPIPE), until close()
        self._devnull = -1
        self._stdin: StdinCopier | None = None
        self._logger: BinaryLogger | None = None
        self._terminal = False
        self._stdin_path = ""  # on a terminal: the stdin FIFO, copied once the master exists
        self._stdin_closed = False  # CloseIO came (kept for a copier that starts later)
        self._out = -1  # on a terminal: the stdout target, until the console takes it
        self._name = ""
        self.console: Console | None = None
        self._started = False
        self._closed = False
        self._close_done = threading.Event()  # set once the first close() has finished

    # -- construction -------------------------------------------------------------------

    @classmethod
    def null(cls) -> ProcessIO:
        """All three streams on /dev/null (``ctr --null-io``, CRI sandboxes)."""
        return cls.open(StdioConfig("", "", ""), container_id="", namespace="")

    @classmethod
    def open(
        cls,
        cfg: StdioConfig,
        *,
        container_id: str,
        namespace: str,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        pty: bool = True,
    ) -> ProcessIO:
        """Open everything ``cfg`` names. Never waits for the client, nor on any file it
        names (fds.py); a binary logger gets ``ready_timeout`` seconds. With
        ``cfg.terminal``, ``pty`` says whether the shim makes the pseudo-terminal (module
        docstring).

        Raises InvalidArgument (unknown scheme, bad combination, a path that is
        neither a FIFO nor a regular file, a ``file://`` log that is not a regular file),
        NotFound / PermissionDenied naming the path, DeadlineExceeded / FailedPrecondition
        from a logger, Internal when no pseudo-terminal can be had. Nothing stays open on
        failure.
        """
        p = plan(cfg.stdin, cfg.stdout, "" if cfg.terminal else cfg.stderr)
        pio = cls()
        pio._name = container_id
        try:
            pio._terminal = cfg.terminal
            pio._open(p, container_id=container_id, namespace=namespace, timeout=ready_timeout)
            if cfg.terminal:
                pio._terminal_setup(pty)
        except BaseException:
            pio.close(timeout=0)
            raise
        return pio

    def _terminal_setup(self, pty: bool) -> None:
        """Re-plumb what ``_open`` opened around a terminal: the stdout target becomes the
        console's output (the stdin FIFO its input, once it exists); the process gets the
        slave (or /dev/null until runc's master arrives)."""
        self._out = os.dup(self._child[1])  # the console's own; _own's copy goes at started()
        null = self._null()
        self._child = [null, null, null]
        if pty:
            master, slave = open_pair()
            self._owned(slave)
            self._child = [slave, slave, slave]
            self.attach_console(master)

    def attach_console(self, master: int) -> None:
        """Take the master of the process's terminal (ours, or runc's from the console
        socket) and start copying. Raises FailedPrecondition without ``terminal``, or once
        a console is attached or the stdio closed (``master`` is closed then)."""
        with self._lock:
            if not self._terminal or self.console is not None or self._closed:
                os.close(master)
                raise FailedPrecondition("this process has no terminal waiting for its master")
            out, self._out = self._out, -1
            try:
                self.console = Console(master, out, self._name)
            except BaseException:
                os.close(master)
                raise
            if self._stdin_path:
                self._stdin = StdinCopier(self._stdin_path, self.console.input_fd())
                self._stdin.start()
                if self._stdin_closed:  # CloseIO before runc's master arrived
                    self._stdin.close_stdin()

    def resize(self, width: int, height: int) -> None:
        """ResizePty. As in containerd's runc shim, a process without a terminal (or whose
        terminal has not arrived yet) ignores it."""
        with self._lock:
            console = self.console
            if console is not None and not self._closed:
                console.resize(width, height)

    def _open(self, p: Plan, *, container_id: str, namespace: str, timeout: float) -> None:
        if p.stdin.scheme is Scheme.PATH and self._terminal:  # copied into the console
            self._stdin_path = p.stdin.path
            self._child[0] = self._null()
        elif p.stdin.scheme is Scheme.PATH:
            self._stdin = StdinCopier(p.stdin.path)
            self._child[0] = self._stdin.child_fd
        else:
            self._child[0] = self._null()
        if p.shared and p.stdout.scheme is Scheme.BINARY:
            self._logger = BinaryLogger.start(
                p.stdout, container_id=container_id, namespace=namespace, ready_timeout=timeout
            )
            self._child[1] = self._logger.stdout_fd
            self._child[2] = self._logger.stderr_fd
        elif p.shared:  # file://: one descriptor, O_APPEND, for both streams
            self._child[1] = self._child[2] = self._owned(self._open_log_file(p.stdout.path))
        else:
            self._child[1] = self._open_output(p.stdout, "stdout")
            self._child[2] = self._open_output(p.stderr, "stderr")
        if self._stdin is not None:
            self._stdin.start()

    def _null(self) -> int:
        if self._devnull < 0:
            self._devnull = self._owned(open_fd(os.devnull, os.O_RDWR, "open"))
        return self._devnull

    def _owned(self, fd: int) -> int:
        self._own.append(fd)
        return fd

    def _open_output(self, target: Target, stream: str) -> int:
        """A FIFO (with our keep-alive read end) or an existing regular file to append to.
        Nothing here waits on the file (see fds.py)."""
        if target.scheme is Scheme.NULL:
            return self._null()
        path = target.path
        st = stat_path(path, f"stat {stream}")
        if st is None:
            raise NotFound(f"open {stream} {path!r}: No such file or directory")
        if stat.S_ISFIFO(st.st_mode):
            reader, writer = open_fifo(path, f"{stream} FIFO")
            self._keep.append(reader)  # a read-only handle we never read from
            self._owned(writer)
            os.set_blocking(writer, True)  # the guest writes as to any FIFO: blocking
            return writer
        if stat.S_ISREG(st.st_mode):  # the runc shim appends to a plain file, without creating it
            return self._owned(open_regular(path, os.O_WRONLY | os.O_APPEND, f"{stream} file"))
        raise InvalidArgument(
            f"{stream} {path!r} is {kind(st.st_mode)}, neither a FIFO nor a regular file"
        )

    @staticmethod
    def _open_log_file(path: str) -> int:
        """``file://``: create parent directories and the file, append to it. It must be a
        regular file: a FIFO would hold the guest's output hostage to whoever reads it."""
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, "create log directory", parent) from exc
        return open_regular(path, os.O_WRONLY | os.O_APPEND, "log file", create=True)

    # -- the life cycle -----------------------------------------------------------------

    def child_fds(self) -> tuple[int, int, int]:
        """The descriptors for the child's 0, 1, 2 (close-on-exec: dup2() them).

        Raises FailedPrecondition after ``started`` or ``close``: ours are gone by then.
        """
        with self._lock:
            if self._started or self._closed:
                raise FailedPrecondition("stdio descriptors were already handed over")
            return (self._child[0], self._child[1], self._child[2])

    def started(self) -> None:
        """The child holds its copies: close ours so its exit is its readers' EOF.

        Idempotent; does nothing after ``close``.
        """
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._release_child_fds()

    def close_stdin(self) -> None:
        """CloseIO: the process reads what was already written to its stdin, then EOF.
        Does nothing when stdin is not a FIFO (it already reads /dev/null)."""
        with self._lock:
            self._stdin_closed = True
            copier = None if self._closed else self._stdin
        if copier is not None:
            copier.close_stdin()

    def close(self, timeout: float = 5.0) -> None:
        """Release everything: descriptors, the stdin copier, the logger (waited for up to
        ``timeout`` s after EOF, then signalled). Idempotent: a call while another is under
        way returns when that one has finished (Delete, after the exit's close, must not
        return before the logger has its last byte), or after ``timeout`` s."""
        with self._lock:
            running = self._closed
            self._closed = True
            if not running:
                self._release_child_fds()
                copier, self._stdin = self._stdin, None
                logger, self._logger = self._logger, None
                keep, self._keep = self._keep, []
                console, self.console = self.console, None
                out, self._out = self._out, -1
        if running:
            self._close_done.wait(timeout)
            return
        try:
            close_quietly(out)
            if console is not None:  # the end of the output first (console.py), bounded
                console.close(timeout)
            if copier is not None:
                copier.stop(timeout=max(timeout, 1.0))
            for fd in keep:
                close_quietly(fd)
            if logger is not None:
                logger.stop(timeout)
        finally:
            self._close_done.set()

    def _release_child_fds(self) -> None:
        """Close our copies of the child's 0/1/2; the copier and logger close their own."""
        if self._stdin is not None:
            self._stdin.release_child_fd()
        if self._logger is not None:
            self._logger.release_child_fds()
        own, self._own = self._own, []
        for fd in own:
            close_quietly(fd)
        self._child = [-1, -1, -1]
        self._devnull = -1
