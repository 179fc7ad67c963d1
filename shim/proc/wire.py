"""What the pod daemon and its spawner say to each other.

One JSON object per datagram on a SOCK_SEQPACKET socketpair; a spawn request carries the
child's three stdio descriptors by SCM_RIGHTS. Errors cross as their numeric `errors.Code`
and a message, never as a class name.

daemon -> spawner:
    {"op": "spawn", "req": n, "config": {...}, "entry": {...}, "setup": {...}}
        + the stdio fds, and the compile channel when setup.compile_channel
    {"op": "kill", "req": n, "pid": p, "signal": s}
spawner -> daemon:
    {"req": n, "pid": p}                      the process exists (sent right after the fork)
    {"req": n, "code": c, "message": m}       the request failed (no process, or kill failed)
    {"req": n, "ok": true}                    the signal was sent
    {"ready": p, "note": t}                   the program is instantiated and runs now (t: for
                                              the log, how its compiled code was found)
    {"failed": p, "code": c, "message": m}    setup failed; its exit follows
    {"exit": p, "status": s}                  always after "ready" or "failed" for that p
    {"hello": p, "identity": i}               a spawner started by exec has booted (i: its
                                              build, shim/warm/identity.py); first message
    {"fatal": t}                              such a spawner cannot boot; it exits next
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from runtimes.base import (
    CacheSettings,
    Entrypoint,
    EntrypointKind,
    HttpMode,
    HttpServing,
    Preopen,
    RunConfig,
)
from shim import errors
from shim.confine.policy import Confinement
from shim.proc.child import ProcessSetup, cut_error

SOCKET_BUFFER = 4 << 20  # a datagram must fit: spawn requests carry the whole process env
MAX_REQUEST = SOCKET_BUFFER  # what the spawner reads at most
MAX_REPLY = 64 << 10  # what the daemon reads at most (error texts are cut to fit)


def encode(msg: dict[str, Any]) -> bytes:
    """One message; an error text too long for a datagram is cut."""
    if "message" in msg:
        msg = {**msg, "message": cut_error(msg["message"])}
    return json.dumps(msg).encode()


def decode(data: bytes) -> dict[str, Any]:
    """One message. Raises ValueError for anything that is not a JSON object."""
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


def spawn_request(cfg: RunConfig, entry: Entrypoint, setup: ProcessSetup) -> dict[str, Any]:
    config = dataclasses.asdict(cfg)
    if cfg.http is not None:
        config["http"] = {**config["http"], "mode": cfg.http.mode.value}
    return {
        "op": "spawn",
        "config": config,
        "entry": {**dataclasses.asdict(entry), "kind": entry.kind.value},
        "setup": dataclasses.asdict(setup),
    }


def parse_spawn(msg: dict[str, Any]) -> tuple[RunConfig, Entrypoint, ProcessSetup]:
    """The values of a spawn request. Raises KeyError/TypeError/ValueError when malformed."""
    c = dict(msg["config"])
    c["args"] = tuple(c["args"])
    c["env"] = tuple(c["env"])
    c["preopens"] = tuple(Preopen(**p) for p in c["preopens"])
    c["cache"] = CacheSettings(**c["cache"]) if c.get("cache") else None
    if c.get("http") is not None:
        c["http"] = HttpServing(**{**c["http"], "mode": HttpMode(c["http"]["mode"])})
    e = dict(msg["entry"])
    e["kind"] = EntrypointKind(e["kind"])
    s = dict(msg["setup"])
    s["cgroup_files"] = tuple(s["cgroup_files"])
    s["namespaces"] = tuple((str(t), str(p)) for t, p in s["namespaces"])
    if s.get("confinement") is not None:
        s["confinement"] = Confinement.from_wire(s["confinement"])
    return RunConfig(**c), Entrypoint(**e), ProcessSetup(**s)


def error_reply(req: object, code: errors.Code, message: str) -> dict[str, Any]:
    return {"req": req, "code": int(code), "message": message}


def error_of(msg: dict[str, Any]) -> errors.ShimError:
    """The exception a reply carrying a code stands for."""
    return errors.from_status(int(msg.get("code", errors.Code.UNKNOWN)), str(msg.get("message")))
