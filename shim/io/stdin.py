"""A process's stdin: the client's FIFO copied into a pipe the shim owns.

Why not hand the FIFO itself to the child? CloseIO must give the guest EOF even while the
client still holds its write end (CRI ``stdin_once``, ``ctr`` after its own stdin ended), and
EOF on a FIFO only happens when *every* writer is gone. With a pipe in between, closing our
write end is EOF, whatever the client does.

Like the runc shim we also hold a write end of the FIFO ourselves. It keeps the copier from
seeing EOF when a client detaches, so another client can attach later; the guest sees EOF only
through close_stdin() (CloseIO) or when the process is torn down. Both FIFO ends are opened
O_NONBLOCK: opening never waits for the client, so Create cannot hang when the client never
opens its end; a stdin path that is not a FIFO is refused before it is opened (fds.py).

One daemon thread does the copying; it only ever blocks in poll() together with a wake-up
pipe, so stop() always gets it back promptly. It owns the descriptors it copies between.

On a terminal the target is the master of the process's pseudo-terminal instead of a pipe
(shim/io/console.py): there is no write end to close, so CloseIO's EOF is the terminal's
end-of-file character, typed once what the client wrote is delivered.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading

from shim.io.console import type_eof
from shim.io.fds import close_quietly, open_fifo, os_error, pipe

_CHUNK = 65536


class StdinCopier:
    """Copies FIFO ``path`` into a pipe; ``child_fd`` is the pipe's read end for the child.
    With ``terminal``, into that descriptor (a pty master, which it then owns) instead, and
    ``child_fd`` is -1."""

    def __init__(self, path: str, terminal: int = -1) -> None:
        """Open the FIFO (both ends, non-blocking) and the pipe; start nothing yet.

        Raises NotFound / PermissionDenied / InvalidArgument (not a FIFO) naming ``path``.
        """
        self._path = path
        self._lock = threading.Lock()
        self._closing = False  # CloseIO: deliver what is buffered, then EOF
        self._stopping = False  # teardown: stop now, drop whatever is pending
        self._fifo_r = self._fifo_w = self.child_fd = self._pipe_w = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._terminal = terminal >= 0
        self._last_byte = b""  # the last byte delivered (on a terminal: a line ended?)
        try:
            if self._terminal:
                self._pipe_w = terminal
            self._fifo_r, self._fifo_w = open_fifo(path, "stdin")
            if not self._terminal:
                self.child_fd, self._pipe_w = pipe()
            os.set_blocking(self._pipe_w, False)
            self._wake_r, self._wake_w = pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        except BaseException:
            self._close_all()
            raise

    def start(self) -> None:
        """Start the copier thread (idempotent)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is not None or self._stopping:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"stdin-copier {self._path}", daemon=True
        )
        self._thread.start()

    def close_stdin(self) -> None:
        """Deliver what the client has already written, then EOF. Returns at once."""
        with self._lock:
            self._closing = True
            if self._thread is None:
                self._start_locked()  # it sees the flag: delivers what is buffered, then EOF
            else:
                self._wake_locked()

    def stop(self, timeout: float) -> None:
        """Stop copying, join the thread (bounded) and release every descriptor."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._wake_locked()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # pragma: no cover - the thread only blocks in poll()
                return  # leave its descriptors alone rather than close them under it
        self._close_all()

    def release_child_fd(self) -> None:
        """Close our copy of the pipe's read end once the child holds its own."""
        with self._lock:
            fd, self.child_fd = self.child_fd, -1
            close_quietly(fd)

    # -- the copier thread --------------------------------------------------------------

    def _wake_locked(self) -> None:
        # Under the lock, so the descriptor cannot be closed (and its number reused) meanwhile.
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            self._copy()
        finally:
            # EOF for the guest: only our write end keeps the pipe open (on a terminal: its
            # end-of-file character, unless this is the teardown).
            with self._lock:
                fd, self._pipe_w = self._pipe_w, -1
                if self._terminal and self._closing and not self._stopping:
                    # After a partial line the first end-of-file character only hands that
                    # line to the reader; a second, at the start of a line, is its EOF.
                    type_eof(fd, times=1 if self._last_byte in (b"", b"\n") else 2)
                close_quietly(fd)

    def _copy(self) -> None:
        pending = b""
        drain_budget: int | None = None  # bytes still to take from the FIFO after CloseIO
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while True:
            with self._lock:
                stopping, closing = self._stopping, self._closing
            if stopping:
                return
            if closing and drain_budget is None:
                drain_budget = fcntl.fcntl(self._fifo_r, fcntl.F_GETPIPE_SZ)
            if not pending and drain_budget is not None:
                pending = self._read(min(_CHUNK, drain_budget))
                if not pending:
                    return  # everything written before CloseIO is delivered
                drain_budget -= len(pending)
            watch_fd, event = (
                (self._pipe_w, select.POLLOUT) if pending else (self._fifo_r, select.POLLIN)
            )
            poller.register(watch_fd, event)
            ready = dict(poller.poll())
            poller.unregister(watch_fd)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
                continue
            if pending:
                try:
                    written = os.write(self._pipe_w, pending)
                except BlockingIOError:
                    continue
                except OSError:
                    return  # EPIPE: the guest closed its stdin or exited
                if written:
                    self._last_byte = pending[written - 1 : written]
                pending = pending[written:]
            else:
                pending = self._read(_CHUNK)

    def _read(self, size: int) -> bytes:
        """Read what is there now; b"" when nothing is (we hold a writer, so never EOF)."""
        if size <= 0:
            return b""
        try:
            return os.read(self._fifo_r, size)
        except BlockingIOError:
            return b""
        except OSError as exc:  # pragma: no cover - a FIFO read has no other failure mode
            raise os_error(exc, "read stdin FIFO", self._path) from exc

    def _close_all(self) -> None:
        with self._lock:
            self._close_all_locked()

    def _close_all_locked(self) -> None:
        for name in ("_fifo_r", "_fifo_w", "child_fd", "_pipe_w", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            setattr(self, name, -1)
            close_quietly(fd)
