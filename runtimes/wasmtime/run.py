"""Loading, linking, instantiating and running a program, and the exit status it ends with.

`load()` maps the compiled code (or compiles it), `prepare()` does every other step that can
fail because of the *program* (link, instantiate, find the entry function), so that Start
reports the reason; `run()` only calls.

Core modules (WASI preview 1) are linked with wasmtime's WASI and, for every other import,
a stub that traps when called: a module built for another host (say, one that also imports an
optional `env` function) still starts, and fails only if it really calls the missing import,
with that import's name in the trap message. A module that imports `fd_renumber` gets it
through renumber.py's adapter, which lets a guest renumber onto a closed descriptor (and so
put its stdout back). Components (WASI preview 2) get wasmtime's wasip2 and wasi:http's
`types` and `outgoing-handler` (so a command component can make HTTP requests): in
wasmtime-py 50 the component linker's `define_unknown_imports_as_traps` also replaces every
wasip2 function with a trap (whatever the order of the calls), so a component with an
import outside these fails at Start, naming the import. A component that exports
`wasi:http/incoming-handler` and no `wasi:cli/run` (a wasi:http/proxy component) fails at
Start with the reason it cannot be served (http/switch.py, PROXY_UNSUPPORTED).

An HTTP server container's program is compiled for the interruptible Engine (engine.py),
by the container process itself through the node's cache, and each of its Stores gets the
request's deadline (http/handler.py); every other program runs on the shared Engine, which
has no epoch checks.

Exit status, as a native process would have it:
- `proc_exit(n)` / `wasi:cli/exit` -> n (wasmtime only allows 0..125; a larger status is
  itself an error, below);
- returning from `_start` or `#func` -> 0; a component's `run` returning err -> 1;
- any trap or other wasmtime error while running -> 134 (128 + SIGABRT, as a native `abort()`
  and `wasmtime run` give), after "wasm trap: <reason>" and the wasm backtrace are written to
  fd 2, the container's stderr.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import wasmtime
import wasmtime.component

from runtimes.base import CacheSettings, Compiled, Entrypoint, EntrypointKind, RunConfig
from runtimes.wasmtime import engine as eng
from runtimes.wasmtime import renumber, sections
from runtimes.wasmtime.cache import Cache, entry_is_component, verified_or_compiled
from runtimes.wasmtime.entry import open_source, read_source
from runtimes.wasmtime.http.switch import PROXY_UNSUPPORTED
from runtimes.wasmtime.wasi import wasi_config
from shim.errors import FailedPrecondition

TRAP_EXIT = 134
RUN_INTERFACE_PREFIX = "wasi:cli/run@0.2"
HTTP_HANDLER_PREFIX = "wasi:http/incoming-handler@0.2"


@dataclass(slots=True)
class ModuleInstance:
    """An instantiated core module and the function to call."""

    entry: Entrypoint
    store: wasmtime.Store
    func: wasmtime.Func
    initialize: wasmtime.Func | None  # a reactor's `_initialize`, called before `func`


@dataclass(slots=True)
class ComponentInstance:
    """An instantiated component and the function to call (`run`, or the `#func` export)."""

    entry: Entrypoint
    store: wasmtime.Store
    func: wasmtime.component.Func


Instance = ModuleInstance | ComponentInstance


@dataclass(slots=True)
class Loaded:
    """Compiled code, mapped or compiled in this process, and the `fd_renumber` adapter
    (renumber.py) when the program is a module that imports `fd_renumber`."""

    code: eng.Code
    renumber: wasmtime.Module | None = None
    declared_memory: int = 0  # bytes, from the module's binary (sections.py); 0: unknown
    interruptible: bool = False  # compiled for engine.interruptible_engine()

    @property
    def engine(self) -> wasmtime.Engine:
        return eng.engine(self.interruptible)


def load(cfg: RunConfig, entry: Entrypoint, compiled: Compiled | None) -> Loaded:
    """Map the verified cache entry the compile job named; without one (no warm runtime, or
    the entry vanished), compile here, through the cache when `cfg.cache` is set. An HTTP
    server's program is for the interruptible Engine: the compile job's entry (if any) is
    not, so it is found or compiled here. Raises FailedPrecondition for a program that does
    not compile."""
    interruptible = cfg.http is not None
    code = _program(cfg, entry, None if interruptible else compiled, interruptible)
    declared = 0
    if entry.kind is EntrypointKind.MODULE:
        fd = open_source(cfg, entry)
        try:
            declared = sections.declared_memory(fd)
        finally:
            os.close(fd)
    adapter: wasmtime.Module | None = None
    if isinstance(code, wasmtime.Module) and renumber.needed(code):
        compiled_adapter = _compiled(cfg, renumber.source(interruptible), renumber.NAME)
        if not isinstance(compiled_adapter, wasmtime.Module):
            raise TypeError(f"{renumber.NAME} compiled to a {type(compiled_adapter).__name__}")
        adapter = compiled_adapter
    return Loaded(code, adapter, declared, interruptible)


def _program(
    cfg: RunConfig, entry: Entrypoint, compiled: Compiled | None, interruptible: bool
) -> eng.Code:
    if compiled is not None:
        try:
            return eng.deserialize(compiled.path, entry_is_component(compiled.path))
        except (OSError, wasmtime.WasmtimeError):
            pass  # evicted or replaced since the job checked it: compile below
    name = entry.guest_path
    src = eng.load_source(read_source(open_source(cfg, entry)), entry.kind, name, interruptible)
    return _compiled(cfg, src, name)


def _compiled(cfg: RunConfig, src: eng.Source, name: str) -> eng.Code:
    """`src` compiled through the cache when `cfg.cache` is set, else here."""
    if cfg.cache is not None:
        with contextlib.suppress(OSError):  # an unwritable cache only costs the caching
            cached = _cache_entry(src, name, cfg.cache)
            return eng.deserialize(cached.path, src.component, src.interruptible)
    return eng.compile_source(src, name)


def _cache_entry(src: eng.Source, name: str, cache: CacheSettings) -> Compiled:
    """The verified cache entry of `src`, compiled and stored first when there is none."""
    return verified_or_compiled(
        src.key, src.component, cache, lambda: eng.compile_source(src, name).serialize()
    )


def compile_to_cache(
    source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
) -> Compiled:
    """In a compile job: the verified cache entry for the program on `source_fd`."""
    return _cache_entry(eng.load_source(read_source(source_fd), kind, name), name, cache)


def find_in_cache(
    source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
) -> Compiled:
    """The verified cache entry for the program on `source_fd`; path "" when there is none
    (never compiles; the note tells of a damaged entry it removed)."""
    src = eng.load_source(read_source(source_fd), kind, name)
    path, note = Cache(cache).lookup(src.key)
    return Compiled(path=path or "", note=note)


def memory_floor(loaded: Loaded) -> int:
    """The declared minimum size of the module's memories: from its binary when it is one
    (sections.py), else of those it exports or imports (what wasmtime-py lists: a `.wat`
    entry's own unexported memory is not counted); 0 for a component."""
    code = loaded.code
    if not isinstance(code, wasmtime.Module):
        return 0
    listed = 0
    types = [e.type for e in code.exports] + [i.type for i in code.imports]
    for ty in types:
        if isinstance(ty, wasmtime.MemoryType):
            listed += ty.limits.min * sections.WASM_PAGE
    return max(listed, loaded.declared_memory)


def prepare(cfg: RunConfig, entry: Entrypoint, loaded: Loaded) -> Instance:
    """WASI context, link and instantiate, as the container's user. Raises FailedPrecondition."""
    return instantiate(cfg, entry, loaded, wasi_config(cfg), cfg.memory_limit, None)


def new_store(
    engine: wasmtime.Engine,
    wasi: wasmtime.WasiConfig,
    memory_cap: int | None,
    deadline: int | None,
) -> wasmtime.Store:
    """A Store of `engine` with its WASI context, its linear-memory cap (bytes) and, for
    the interruptible Engine, its epoch deadline (ticks from now)."""
    store = wasmtime.Store(engine)
    if deadline is not None:
        store.set_epoch_deadline(deadline)
    if memory_cap is not None:
        store.set_limits(memory_size=memory_cap)
    store.set_wasi(wasi)
    return store


def instantiate(
    cfg: RunConfig,
    entry: Entrypoint,
    loaded: Loaded,
    wasi: wasmtime.WasiConfig,
    memory_cap: int | None,
    deadline: int | None,
) -> Instance:
    """The program linked and instantiated in a new Store (`new_store`) of its Engine.
    Raises FailedPrecondition."""
    engine = loaded.engine
    store = new_store(engine, wasi, memory_cap, deadline)
    if isinstance(loaded.code, wasmtime.component.Component):
        return _prepare_component(cfg, entry, store, loaded.code, engine)
    return _prepare_module(cfg, entry, store, loaded.code, loaded.renumber, engine)


def exports_http_handler(component: wasmtime.component.Component, engine: wasmtime.Engine) -> bool:
    """A wasi:http/proxy component: it exports wasi:http/incoming-handler and no wasi:cli/run."""
    names = list(component.type.exports(engine))
    return any(n.startswith(HTTP_HANDLER_PREFIX) for n in names) and not any(
        n.startswith(RUN_INTERFACE_PREFIX) for n in names
    )


def _instantiate_error(
    cfg: RunConfig, entry: Entrypoint, e: wasmtime.Trap | wasmtime.WasmtimeError
) -> FailedPrecondition:
    limit = "" if cfg.memory_limit is None else f" (memory limit: {cfg.memory_limit} bytes)"
    return FailedPrecondition(f"cannot instantiate {entry.guest_path}: {eng.one_line(e)}{limit}")


def _prepare_module(
    cfg: RunConfig,
    entry: Entrypoint,
    store: wasmtime.Store,
    module: wasmtime.Module,
    renumber_adapter: wasmtime.Module | None,
    engine: wasmtime.Engine,
) -> ModuleInstance:
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    try:
        if renumber_adapter is not None:
            renumber.link(linker, store, renumber_adapter)
        linker.define_unknown_imports_as_traps(module)
        instance = linker.instantiate(store, module)  # runs a start section: may trap
    except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
        raise _instantiate_error(cfg, entry, e) from e
    exports = instance.exports(store)
    wanted = entry.func or "_start"
    func = exports.get(wanted)
    if not isinstance(func, wasmtime.Func):
        if entry.func is None:
            raise FailedPrecondition(
                f"{entry.guest_path} exports no _start function (it is not a WASI command); "
                f"name the function to call as {entry.guest_path}#<function>"
            )
        raise FailedPrecondition(
            f"{entry.guest_path} exports no function {wanted!r} "
            f"(its functions: {', '.join(_func_names(exports)) or 'none'})"
        )
    if func.type(store).params:
        raise FailedPrecondition(
            f"{entry.guest_path}#{wanted} takes parameters; an entrypoint must take none"
        )
    init = exports.get("_initialize") if entry.func is not None else None
    return ModuleInstance(
        entry=entry,
        store=store,
        func=func,
        initialize=init if isinstance(init, wasmtime.Func) else None,
    )


def _func_names(exports: Any) -> list[str]:
    return sorted(name for name, item in exports.items() if isinstance(item, wasmtime.Func))


def _prepare_component(
    cfg: RunConfig,
    entry: Entrypoint,
    store: wasmtime.Store,
    component: wasmtime.component.Component,
    engine: wasmtime.Engine,
) -> ComponentInstance:
    if entry.func is None and exports_http_handler(component, engine):
        raise FailedPrecondition(f"{entry.guest_path}: {PROXY_UNSUPPORTED}")
    linker = wasmtime.component.Linker(engine)
    try:
        linker.add_wasip2()
        linker.add_wasi_http()
        store.set_wasi_http()
        instance = linker.instantiate(store, component)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
        raise _instantiate_error(cfg, entry, e) from e
    export_names = list(component.type.exports(engine))
    if entry.func is None:
        runs = sorted(n for n in export_names if n.startswith(RUN_INTERFACE_PREFIX))
        if not runs:
            raise FailedPrecondition(
                f"{entry.guest_path} is a component without a wasi:cli/run@0.2 export "
                f"(its exports: {', '.join(export_names) or 'none'}); "
                f"name the function to call as {entry.guest_path}#<function>"
            )
        iface = instance.get_export_index(store, runs[-1])
        index = instance.get_export_index(store, "run", iface) if iface else None
        label = f"{runs[-1]}#run"
    else:
        index = instance.get_export_index(store, entry.func)
        label = entry.func
    func = instance.get_func(store, index) if index is not None else None
    if func is None:
        raise FailedPrecondition(
            f"{entry.guest_path} exports no function {label!r} "
            f"(its exports: {', '.join(export_names) or 'none'})"
        )
    if func.type(store).params:
        raise FailedPrecondition(
            f"{entry.guest_path}#{label} takes parameters; an entrypoint must take none"
        )
    return ComponentInstance(entry=entry, store=store, func=func)


def run(prepared: Instance) -> int:
    """Call the entry function and turn how it ended into an exit status (module docstring)."""
    try:
        if isinstance(prepared, ComponentInstance):
            result = prepared.func(prepared.store)
            return 1 if getattr(result, "tag", None) == "err" else 0
        if prepared.initialize is not None:
            prepared.initialize(prepared.store)
        prepared.func(prepared.store)
        return 0
    except wasmtime.ExitTrap as e:
        return e.code & 0xFF
    except (wasmtime.Trap, wasmtime.WasmtimeError) as e:  # Trap is not a WasmtimeError
        report_trap(e)
        return TRAP_EXIT


def trap_report(e: wasmtime.Trap | wasmtime.WasmtimeError) -> str:
    """The stderr text for a trap: "wasm trap: <root cause>" on the first line, so that the
    reason is what a user sees first, then wasmtime's full text with the wasm backtrace."""
    text = str(e).rstrip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = lines[-1] if lines else type(e).__name__
    if cause.startswith("wasm trap: "):
        cause = cause[len("wasm trap: ") :]
    return f"wasm trap: {cause}\n{text}\n"


def report_trap(e: wasmtime.Trap | wasmtime.WasmtimeError) -> None:
    """Write the trap report to fd 2. A closed stderr must not change the exit status."""
    data = trap_report(e).encode("utf-8", "replace")
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(2, data) :]
