"""A process's terminal: the master side of a pseudo-terminal, copied to and from the client.

With ``terminal=true`` containerd creates a stdin FIFO and a stdout FIFO only (no stderr: on a
terminal both output streams are one). The container process holds the slave side as its
stdin, stdout and stderr and as its controlling terminal; the shim holds the master and copies
the client's stdin FIFO into it (``StdinCopier`` with the master as its target) and whatever
the process writes out of it into the stdout target (``OutputPump``). For a wasm process the
shim makes the pair itself (``open_pair``); runc makes a native container's and sends the
master over the console socket (shim/io/console_socket.py).

Ordering of the end. The pump ends by itself once the master reads EIO, which a pty does only
after every slave descriptor is closed and the output written before that has been read: so
the last bytes a process writes are copied before its client sees EOF, and the client's EOF
(the pump closing its copy of the stdout target) comes right after the process and everything
that held its terminal have exited. ``close`` waits for that (bounded) before it tears down.

CloseIO on a terminal cannot close the master, which still carries the output: the copier
delivers what the client wrote, then types the terminal's end-of-file character (VEOF,
usually ^D), which a program reading in canonical mode sees as EOF, as on a real terminal
(twice after a partial line: the first only hands that line over).

Each of the two threads owns a duplicate of the master (one open file description, so one
O_NONBLOCK flag for all: both only ever wait in poll()); ``resize`` uses the console's own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
import threading

from shim.errors import Internal, InvalidArgument
from shim.io.fds import close_quietly

_CHUNK = 65536


def open_pair() -> tuple[int, int]:
    """A new pseudo-terminal (master, slave), both close-on-exec. Raises Internal."""
    try:
        master, slave = os.openpty()  # non-inheritable, as every descriptor of ours
    except OSError as exc:
        raise Internal(f"cannot open a pseudo-terminal: {exc.strerror or exc}") from exc
    return master, slave


def set_size(fd: int, width: int, height: int) -> None:
    """TIOCSWINSZ: the terminal's size in columns and rows (the kernel signals SIGWINCH to its
    foreground process group). A size the kernel cannot hold (each is 16 bits; ResizePty
    sends 32) is InvalidArgument; a failing ioctl is Internal."""
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        raise InvalidArgument(f"terminal size {width}x{height}: each must be at most 65535")
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    except OSError as exc:
        raise Internal(f"cannot set the terminal's size: {exc.strerror or exc}") from exc


def type_eof(fd: int, times: int = 1) -> None:
    """Type the terminal's end-of-file character ``times`` times into master ``fd`` when the
    terminal is in canonical mode (a raw-mode program has no notion of an end of input).
    Best effort: a terminal already gone needs no EOF."""
    with contextlib.suppress(OSError, termios.error):
        attrs = termios.tcgetattr(fd)  # on a master, the pair's (the slave's) settings
        if attrs[3] & termios.ICANON:
            eof = attrs[6][termios.VEOF]
            os.write(fd, (eof if isinstance(eof, bytes) else bytes([eof])) * times)


class OutputPump:
    """Copies a terminal's master into an output descriptor until the master reads EIO (every
    slave closed) or ``stop``. Owns both descriptors it is given and closes them when it ends,
    which is the client's EOF."""

    def __init__(self, master: int, dest: int, name: str) -> None:
        self._src, self._dest = master, dest
        self._lock = threading.Lock()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tty-output {name}", daemon=True)

    def start(self) -> None:
        """Start copying; a thread that cannot start (a pids limit) releases everything."""
        try:
            self._thread.start()
        except BaseException:
            self._release()
            raise

    def finish(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the pump to end by itself; True if it did."""
        return self._done.wait(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        """End the pump now (what was not copied yet is dropped) and release everything."""
        with self._lock:
            self._stopping = True
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._release()

    def _release(self) -> None:
        with self._lock:
            fds = (self._src, self._dest, self._wake_r, self._wake_w)
            self._src = self._dest = self._wake_r = self._wake_w = -1
        for fd in fds:
            close_quietly(fd)

    def _run(self) -> None:
        try:
            self._copy()
        finally:
            with self._lock:  # EOF for the client at once, not when the task is deleted
                src, dest, self._src, self._dest = self._src, self._dest, -1, -1
            close_quietly(src)
            close_quietly(dest)
            self._done.set()

    def _wait(self, fd: int, event: int) -> bool:
        """poll() for ``event`` on ``fd`` or a wake-up; False when the pump must stop."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(fd, event)
        poller.poll()
        with self._lock:
            return not self._stopping

    def _copy(self) -> None:
        os.set_blocking(self._src, False)
        os.set_blocking(self._dest, False)  # a full FIFO must not hold stop() off
        writable = True  # False once the destination refused a write: drain, drop
        while self._wait(self._src, select.POLLIN):
            try:
                data = os.read(self._src, _CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # every slave closed: the end of the output
                    return
                raise
            if not data:
                return
            while data and writable:
                try:
                    data = data[os.write(self._dest, data) :]
                except BlockingIOError:
                    if not self._wait(self._dest, select.POLLOUT):
                        return
                except OSError:
                    writable = False  # keep reading so the process never blocks on output


class Console:
    """The master of one process's terminal, with its two copiers (module docstring)."""

    def __init__(self, master: int, dest: int, name: str) -> None:
        """Take ``master`` and ``dest`` (the stdout target's descriptor: a FIFO, a log file,
        a logger's pipe); start copying out. Raises Internal (a dup failing)."""
        self.master = master
        pump_src = -1
        try:
            pump_src = os.dup(master)
            self._pump = OutputPump(pump_src, dest, name)
        except BaseException:
            close_quietly(pump_src)
            close_quietly(dest)
            raise
        self._pump.start()

    def input_fd(self) -> int:
        """A new duplicate of the master for the stdin copier (which then owns it)."""
        return os.dup(self.master)

    def resize(self, width: int, height: int) -> None:
        set_size(self.master, width, height)

    def close(self, timeout: float) -> None:
        """Let the output pump reach the end of the output (bounded by ``timeout``), then
        stop it and close the master."""
        self._pump.finish(timeout)
        self._pump.stop()
        fd, self.master = self.master, -1
        close_quietly(fd)
