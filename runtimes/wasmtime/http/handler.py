"""One request, one fresh instance: the WAGI program run with the CGI environment.

The program is compiled once (the container process loaded it at Start, from the node's
cache); each request gets a new Store and instance of that code, so requests share no guest
state and a trap ends only its own request. A command module (`_start`) without the
`fd_renumber` adapter is linked once (`InstancePre`: imports resolved at Start) and each
request only instantiates; a module with the adapter or a `#func` entry (a reactor's
`_initialize` comes first), or a component, is linked per request (the adapter is an
instance of its own per Store; wasmtime-py has no pre-instantiation for components).

What a request's program gets: argv as the container's `process.args`; the environment of
cgi.py; the body as stdin (in memory); stdout captured (at most MAX_OUTPUT bytes: more makes
the program's writes fail); stderr the container's; the container's `/` as its preopen, as
the container's user; a linear-memory cap of `memory_cap` (the container's headroom divided
among the requests that may run at once: see server.py); and an epoch deadline.

Timeouts: the program is compiled for the interruptible Engine (engine.py), whose code
checks the epoch at every function entry and loop back-edge.
A ticker thread advances the epoch every TICK seconds while the server runs; each request's
Store traps once `timeout` has passed (`Outcome.TIMEOUT`). A program blocked in a host call
(a read of a file that never ends) is not in wasm code and is not interrupted until it
returns to it.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import threading
from dataclasses import dataclass, replace

import wasmtime
import wasmtime._ffi as ffi

from runtimes.base import Entrypoint, RunConfig
from runtimes.wasmtime import engine as eng
from runtimes.wasmtime import run as wrun
from runtimes.wasmtime.wasi import wasi_config
from shim.errors import FailedPrecondition

TICK = 0.05  # seconds between epoch ticks while a server runs
MAX_OUTPUT = 16 << 20  # bytes of a program's stdout kept for its response


class Outcome(enum.Enum):
    EXITED = "exited"  # returned or called exit: `status` says how
    TRAPPED = "trapped"  # a trap (reported on the container's stderr)
    TIMEOUT = "timeout"  # interrupted at its deadline


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int  # the exit status when EXITED
    output: bytearray  # what the program wrote on stdout (the collector's buffer, no copy)
    truncated: bool  # it wrote more than MAX_OUTPUT


class _Collector:
    """The program's stdout, kept in memory up to MAX_OUTPUT."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False

    def write(self, chunk: bytes) -> int:
        if len(self.data) + len(chunk) > MAX_OUTPUT:
            self.truncated = True
            return -errno.EFBIG
        self.data += chunk
        return len(chunk)


def _stdin_bytes(wasi: wasmtime.WasiConfig, body: bytes | bytearray) -> None:
    """The body as the program's stdin (the C API's wasi_config_set_stdin_bytes, which
    wasmtime-py 50 binds but does not wrap; it takes the vector's bytes). The body is
    copied once, straight into the vector."""
    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new_uninitialized(ctypes.byref(vec), len(body))
    if body:
        source = body if isinstance(body, bytes) else (ctypes.c_char * len(body)).from_buffer(body)
        ctypes.memmove(vec.data, source, len(body))
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


class Handler:
    """The loaded program and how to run it once per request."""

    def __init__(self, cfg: RunConfig, entry: Entrypoint, loaded: wrun.Loaded) -> None:
        self.cfg = cfg
        self.entry = entry
        self.loaded = loaded
        self.memory_cap: int | None = cfg.memory_limit
        assert cfg.http is not None
        self.deadline = math.ceil(cfg.http.timeout / TICK) + 1
        self._pre: wasmtime.InstancePre | None = None
        code = loaded.code
        if isinstance(code, wasmtime.Module) and loaded.renumber is None and entry.func is None:
            linker = wasmtime.Linker(eng.interruptible_engine())
            linker.define_wasi()
            try:
                linker.define_unknown_imports_as_traps(code)
                self._pre = linker.instantiate_pre(code)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                raise FailedPrecondition(
                    f"cannot link {entry.guest_path}: {eng.one_line(e)}"
                ) from e

    def check(self) -> None:
        """At Start: one instance made and dropped, so that a program that cannot be
        instantiated (or exports no entry function) fails Start with the reason."""
        wrun.instantiate(
            self.cfg, self.entry, self.loaded, wasi_config(self.cfg), self.memory_cap, self.deadline
        )

    def call(self, env: list[tuple[str, str]], body: bytes | bytearray) -> Result:
        """Run the program once. Raises FailedPrecondition when it cannot be instantiated
        (the server answers 500)."""
        cfg = replace(self.cfg, env=tuple(f"{k}={v}" for k, v in env))
        wasi = wasi_config(cfg)
        _stdin_bytes(wasi, body)
        out = _Collector()
        wasi.stdout_custom = out.write
        try:
            if self._pre is not None:
                store = wrun.new_store(
                    eng.interruptible_engine(), wasi, self.memory_cap, self.deadline
                )
                instance = self._pre.instantiate(store)
                func = instance.exports(store).get("_start")
                if not isinstance(func, wasmtime.Func):
                    raise FailedPrecondition(f"{self.entry.guest_path} exports no _start")
                func(store)
            else:
                prepared = wrun.instantiate(
                    cfg, self.entry, self.loaded, wasi, self.memory_cap, self.deadline
                )
                if isinstance(prepared, wrun.ComponentInstance):
                    result = prepared.func(prepared.store)
                    if getattr(result, "tag", None) == "err":
                        return Result(Outcome.EXITED, 1, out.data, out.truncated)
                else:
                    if prepared.initialize is not None:
                        prepared.initialize(prepared.store)
                    prepared.func(prepared.store)
            status = 0
        except wasmtime.ExitTrap as e:
            status = e.code & 0xFF
        except wasmtime.Trap as e:
            if e.trap_code is wasmtime.TrapCode.INTERRUPT:
                return Result(Outcome.TIMEOUT, 0, out.data, out.truncated)
            wrun.report_trap(e)
            return Result(Outcome.TRAPPED, 0, out.data, out.truncated)
        except wasmtime.WasmtimeError as e:
            wrun.report_trap(e)
            return Result(Outcome.TRAPPED, 0, out.data, out.truncated)
        return Result(Outcome.EXITED, status, out.data, out.truncated)


class Ticker:
    """Advances the shared Engine's epoch every TICK seconds until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        engine = eng.interruptible_engine()
        while not self._stop.wait(TICK):
            engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
