"""The daemon's log: logfmt lines on the bundle's `log` FIFO, each naming its container.

containerd opens `<bundle>/log` (a FIFO) before it runs `start` and copies every line into its
own log, so a node operator finds the shim's messages in `journalctl -u containerd`. One shim
serves every container of a pod, so each line carries `id=<container>`: the container whose RPC
or exit is being handled (a context variable, set at the RPC boundary), else the shim's own id.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time

current_container: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_container", default=""
)

LOG_FIFO = "log"


def _quote(value: str) -> str:
    if value and not any(ch in value for ch in ' "=\n\t\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """`time=... level=... msg=... id=... runtime=...`, the shape logrus gives containerd's logs."""

    def __init__(self, shim_id: str) -> None:
        super().__init__()
        self.shim_id = shim_id

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs * 1000):06d}Z"
        cid = current_container.get() or self.shim_id
        return (
            f"time={ts} level={record.levelname.lower()} msg={_quote(msg)} "
            f"id={_quote(cid)} runtime=io.containerd.wasmtime.v1 pid={os.getpid()}"
        )


def forget() -> None:
    """Close and drop every log handler this process inherited.

    A process forked from the warm runtime inherits its handlers, file objects included. Call
    this before closing descriptors by number (`os.closerange`): a handler dropped afterwards
    would close, when collected, a descriptor number that by then belongs to something else.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()


def setup(bundle: str, shim_id: str, debug: bool) -> None:
    """Send the root logger to `<bundle>/log` when containerd created it; else to nowhere.

    The FIFO is opened write-only: containerd holds it open for reading and writing, so the
    open never blocks; without it (a shim run by hand) the daemon has no stderr to write to.
    """
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    path = os.path.join(bundle, LOG_FIFO)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        root.addHandler(logging.NullHandler())
        return
    os.set_blocking(fd, True)
    stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(shim_id))
    root.addHandler(handler)
