"""The handle of one container process, whoever created it, and how its end is counted.

Both kinds of container process (wasm, forked by the spawner; native, created by runc and
reparented to the daemon) give the task layer the same `Process`: a pid, a future that
resolves when the program is running (or fails with the reason it never will), and a future
that resolves with the exit status. An exit that arrives before anyone awaits it is simply
held by its future: there is no separate buffer of early exits anywhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field

# Signals whose default action ends a process. A wasm guest cannot handle any signal, so each
# of these ends it; but as the init of its own PID namespace the kernel ignores them (only
# SIGKILL and SIGSTOP reach an init without handlers), so such a guest gets SIGKILL instead
# (`Process.stand_in`) and its exit is reported as the signal asked for.
TERMINATING_SIGNALS = frozenset(int(s) for s in signal.valid_signals()) - {
    int(s)
    for s in (
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGCHLD,
        signal.SIGCONT,
        signal.SIGURG,
        signal.SIGWINCH,
    )
}
_SIGKILL_STATUS = 128 + signal.SIGKILL
# What an HTTP server container (runtimes/wasmtime/http/server.py) handles once it is ready:
# it drains and exits 0, so these reach it as they are.
SERVER_STOP_SIGNALS = frozenset({int(signal.SIGTERM), int(signal.SIGINT)})


def exit_code_from_wait_status(status: int) -> int:
    """A waitpid status -> the number containerd reports: the exit code, or 128+signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


@dataclass(eq=False)
class Process:
    """One container process. Created on the daemon's event loop; resolve only there."""

    pid: int
    note: str = ""  # for the log, once ready: how its compiled code was found
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    exited: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    pid_namespace_init: bool = False  # a wasm guest alone in a PID namespace of its own
    killed_as: int = 0  # the signal a SIGKILL was sent in place of (`stand_in`)
    serves_http: bool = False  # handles SERVER_STOP_SIGNALS once ready

    def stand_in(self, sig: int) -> int:
        """The signal to send for `sig`: SIGKILL in place of a terminating one when the
        process is a PID namespace's init (see TERMINATING_SIGNALS), remembered so that its
        exit is reported as `sig`'s; but a ready HTTP server gets SERVER_STOP_SIGNALS as
        they are (its handlers are installed before it reports ready)."""
        if self.serves_http and sig in SERVER_STOP_SIGNALS and self._is_ready():
            return sig
        if self.pid_namespace_init and sig in TERMINATING_SIGNALS:
            self.killed_as = self.killed_as or sig
            return int(signal.SIGKILL)
        return sig

    def _is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    def set_ready(self, error: BaseException | None = None) -> None:
        """Readiness is decided once; later calls are ignored."""
        if self.ready.done():
            return
        if error is None:
            self.ready.set_result(None)
        else:
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody may be waiting any more

    def set_exited(self, status: int) -> None:
        """The exit status is decided once; later calls are ignored."""
        if not self.exited.done():
            if self.killed_as and status == _SIGKILL_STATUS:
                status = 128 + self.killed_as
            self.exited.set_result(status)
