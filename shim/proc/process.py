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
from dataclasses import dataclass, field


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
            self.exited.set_result(status)
