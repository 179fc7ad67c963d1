"""The console socket: how runc (or crun) hands the shim the master of a native process's
terminal, as containerd's runc shim receives it.

For a process whose spec says ``terminal: true``, runc makes the pseudo-terminal inside the
container and needs somewhere to send its master: ``--console-socket PATH``, a unix stream
socket the caller listens on. runc connects once and sends one message whose ancillary data
(SCM_RIGHTS) carries the master's descriptor (the payload is the terminal's name). The
socket lives in a private directory of its own (0700, under the temporary directory: a
bundle's path can be longer than a socket address allows) that ``close`` removes.

``receive`` is awaited beside the runc command that sends the master: it never blocks the
event loop; the caller cancels it when the command fails without connecting, or when no
master arrives within a further timeout after the command succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile

from shim.errors import Internal
from shim.io.fds import close_quietly

MAX_NAME = 4096  # the payload: the terminal's name


class ConsoleSocket:
    """A listening socket for one master (module docstring)."""

    def __init__(self) -> None:
        """Make the directory and listen. Raises Internal."""
        try:
            self._dir = tempfile.mkdtemp(prefix="wasmtime-shim-pty-")
        except OSError as exc:
            raise Internal(f"console socket directory: {exc.strerror or exc}") from exc
        self.path = os.path.join(self._dir, "pty.sock")
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise Internal(f"console socket {self.path}: {exc.strerror or exc}") from exc
        try:
            self._sock.bind(self.path)
            self._sock.listen(1)
            self._sock.setblocking(False)
        except OSError as exc:
            self.close()
            raise Internal(f"console socket {self.path}: {exc.strerror or exc}") from exc

    async def receive(self) -> int:
        """The master runc sends (a new descriptor the caller owns). Raises Internal when
        the peer sends no descriptor."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            readable: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(conn.fileno(), wake)
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())
            _, fds, _, _ = socket.recv_fds(conn, MAX_NAME, 4, socket.MSG_CMSG_CLOEXEC)
        if not fds:
            raise Internal(f"the console socket {self.path} received no terminal")
        for extra in fds[1:]:
            close_quietly(extra)
        os.set_inheritable(fds[0], False)  # MSG_CMSG_CLOEXEC is not honoured on every path
        return fds[0]

    def close(self) -> None:
        """Stop listening and remove the directory. Idempotent."""
        with contextlib.suppress(OSError):
            self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)
