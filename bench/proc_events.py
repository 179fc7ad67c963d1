"""Kernel process events (exec, fork, exit) with their monotonic timestamps, for the phase
breakdown of bench/ctr_run.py.

The Linux proc connector (a NETLINK_CONNECTOR socket subscribed to CN_IDX_PROC, root only)
reports every fork, exec and exit on the machine as it happens, stamped with the kernel's
CLOCK_MONOTONIC. A thread reads them while the benchmark runs and notes, at the moment of each
event, the command line it is about (a process that exits is gone before anyone could ask).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass, field

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_HDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
EVENT_HDR = struct.Struct("=IIQ")
FORK, EXEC, EXIT = 0x1, 0x2, 0x80000000


@dataclass(frozen=True, slots=True)
class Event:
    ts: int  # CLOCK_MONOTONIC ns
    what: str  # "fork", "exec", "exit"
    pid: int  # fork: the child
    parent: int = 0  # fork: the parent
    argv: tuple[str, ...] = ()  # exec: the new program's; fork: the parent's


def _argv(pid: int) -> tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ()
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


@dataclass
class Tracer:
    """`with Tracer() as t: ...` then `t.events`."""

    events: list[Event] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: bool = False

    def __enter__(self) -> Tracer:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        sock.bind((os.getpid(), CN_IDX_PROC))
        payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), 3, 0, 0, os.getpid()) + cn)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()

    def _read(self) -> None:
        assert self._sock is not None
        offset = NLMSG_HDR.size + CN_MSG.size
        while not self._stop:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            what, _cpu, ts = EVENT_HDR.unpack_from(data, offset)
            body = offset + EVENT_HDR.size
            if what == FORK:
                ppid, _ptgid, cpid, ctgid = struct.unpack_from("=IIII", data, body)
                if cpid == ctgid:  # a process, not a thread
                    self.events.append(Event(ts, "fork", cpid, ppid, _argv(ppid)))
            elif what == EXEC:
                pid, tgid = struct.unpack_from("=II", data, body)
                self.events.append(Event(ts, "exec", tgid, 0, _argv(tgid)))
            elif what == EXIT:
                pid, tgid = struct.unpack_from("=II", data, body)
                if pid == tgid:
                    self.events.append(Event(ts, "exit", tgid))
