"""`ctr run --rm` latency with a per-phase breakdown, throughput, and memory per idle
container: this shim against runc, measured in the same run on the same containerd.

- wasm: a hello-world wasm module through `io.containerd.wasmtime.v1` (this shim);
- runc: a static native program through `io.containerd.runc.v2` (containerd's own shim), the
  cost of an ordinary container on the same machine;
- wasmtime-py: the same module run by a fresh `python -c` with wasmtime-py (import, compile,
  instantiate, run), the cost of the engine alone outside containerd.

Latency: `--runs` sequential `ctr run --rm`, interleaved, medians and p90s, and the ratios.
The phases come from the kernel's process events (bench/proc_events.py): containerd's work
before it runs `<shim> start`; the `start` process; from its exit until the container
process exists (Create, Start: for wasm the fork of the container process, for runc the exec
of its program); the program's run (for wasm this includes loading and instantiating the
module); its exit until `<shim> delete` runs (Wait, Delete, Shutdown); the `delete` process;
then until ctr exits.

Throughput: `--tasks` lifecycles `--parallel` at a time (tasks/s). Memory: `--idle`
sleeping containers of each kind, the PSS of every process that exists for them summed and
divided by their number (for wasm the warm runtime is included, its shares divided among
all; for runc each shim and its container's process).

Run as root:
    .venv/bin/python -m bench.ctr_run [--runs 30] [--tasks 200] [--parallel 4] [--idle 50]
                                      [--frozen]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.proc_events import Event, Tracer
from tests.containerd import RUNTIME, PrivateContainerd
from tests.pause.build import SIDECAR_IMAGE, SIDECAR_PATH, sidecar_image
from tests.wasm.build import build_c
from wasmtime_shim.images.build import CTR_IMPORT_FLAGS, build_image

WASM_IMAGE = "docker.io/library/bench-hello:wasm"
RUNC = "io.containerd.runc.v2"
PHASES = (
    "containerd until start",
    "start process",
    "create+start",
    "program runs",
    "exit until delete",
    "delete process",
    "delete until ctr exits",
)


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


def _has_id(argv: tuple[str, ...], cid: str) -> bool:
    return any(a == "-id" and b == cid for a, b in itertools.pairwise(argv))


def phases(events: list[Event], cid: str, native: bool) -> dict[str, float] | None:
    """The phases of one `ctr run` of container `cid`, in ms (None if events are missing)."""
    first: dict[str, Event] = {}
    forked_with_id: set[int] = set()
    begin: Event | None = None
    for e in events:
        if e.what == "exec" and e.argv:
            if "ctr" in e.argv[0] and cid in e.argv and "ctr" not in first:
                first["ctr"] = e
            for action in ("start", "delete"):
                if _has_id(e.argv, cid) and action in e.argv and action not in first:
                    first[action] = e
            if native and e.argv[0] == SIDECAR_PATH and begin is None and "start" in first:
                begin = e
        elif e.what == "fork" and _has_id(e.argv, cid):
            forked_with_id.add(e.pid)
            if not native and e.parent in forked_with_id:  # the spawner's child
                begin = e
    if begin is None or len(first) < 3:
        return None
    exits = {e.pid: e.ts for e in events if e.what == "exit"}
    t = {k: (v.ts, exits.get(v.pid)) for k, v in first.items()}
    proc_exit = exits.get(begin.pid)
    needed = [t["ctr"][1], t["start"][1], t["delete"][1], proc_exit]
    if any(x is None for x in needed):
        return None
    points = [
        t["ctr"][0],
        t["start"][0],
        t["start"][1],
        begin.ts,
        proc_exit,
        t["delete"][0],
        t["delete"][1],
        t["ctr"][1],
    ]
    pairs = zip(PHASES, points[:-1], points[1:], strict=True)
    return {name: (b - a) / 1e6 for name, a, b in pairs}  # type: ignore[operator]


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def processes_of(cd: PrivateContainerd, shim_name: str) -> dict[int, tuple[str, ...]]:
    """Every process of this containerd's shims (their argv name `shim_name`), and their
    children (a runc shim's container processes do not carry its command line)."""
    found: dict[int, tuple[str, ...]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = tuple(a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0"))
                if str(cd.address) in argv and any(shim_name in a for a in argv):
                    found[int(proc.name)] = argv
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _ppid(int(proc.name)) in found:
            found.setdefault(int(proc.name), ("child",))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=30, help="sequential runs per runtime")
    p.add_argument("--tasks", type=int, default=200, help="containers in the throughput test")
    p.add_argument("--parallel", type=int, default=4, help="containers at a time")
    p.add_argument("--idle", type=int, default=50, help="idle containers for the memory test")
    p.add_argument(
        "--frozen",
        action="store_true",
        help="measure the PyInstaller binary (packaging/build.py) instead of the venv's script",
    )
    args = p.parse_args(argv)
    shim = None
    if args.frozen:
        built = subprocess.run(
            [sys.executable, "packaging/build.py"], capture_output=True, text=True, check=True
        )
        shim = Path(built.stdout.strip().splitlines()[-1])
        print(f"shim: {shim}")

    wasm = build_c("hello")
    sleep = build_c("sleep")
    with tempfile.TemporaryDirectory() as tmp, PrivateContainerd(log_level="warn", shim=shim) as cd:
        files = {"/hello.wasm": wasm, "/sleep.wasm": sleep}
        wasm_tar = build_image(files, ref=WASM_IMAGE).write(Path(tmp) / "w.tar")
        cd.ctr("image", "import", *CTR_IMPORT_FLAGS, str(wasm_tar))
        native_tar = sidecar_image().write(Path(tmp) / "n.tar")
        cd.ctr("image", "import", str(native_tar))
        counter = iter(range(1_000_000))

        def run_wasm() -> str:
            cid = f"w{next(counter)}"
            cmd = ("run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, cid, "/hello.wasm")
            _check(cd.ctr(*cmd, check=False), "wasm run")
            return cid

        def run_runc() -> str:
            cid = f"n{next(counter)}"
            cmd = ("run", "--rm", "--runtime", RUNC, "--env", "SIDECAR_EXIT=0")
            _check(cd.ctr(*cmd, SIDECAR_IMAGE, cid, check=False), "runc run")
            return cid

        code = (
            "import sys, wasmtime as w\n"
            "e = w.Engine(); s = w.Store(e); c = w.WasiConfig(); c.inherit_stdout()\n"
            "c.argv = ['hello']; s.set_wasi(c); l = w.Linker(e); l.define_wasi()\n"
            f"m = w.Module.from_file(e, {str(wasm)!r})\n"
            "try:\n    l.instantiate(s, m).exports(s)['_start'](s)\n"
            "except w.ExitTrap as x:\n    sys.exit(x.code)\n"
        )

        def run_direct() -> str:
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=False
            )
            _check(proc, "wasmtime-py")
            return ""

        runners: dict[str, Callable[[], str]] = {
            "wasm": run_wasm,
            "runc": run_runc,
            "wasmtime-py": run_direct,
        }
        for fn in runners.values():  # warm up: the warm runtime, compile cache, page cache
            fn()
            fn()
        times: dict[str, list[float]] = {name: [] for name in runners}
        runs: dict[str, list[tuple[str, int, int]]] = {"wasm": [], "runc": []}
        with Tracer() as tracer:
            for _ in range(args.runs):
                for name, fn in runners.items():
                    t0 = time.monotonic_ns()
                    cid = fn()
                    t1 = time.monotonic_ns()
                    times[name].append((t1 - t0) / 1e6)
                    if name in runs:
                        runs[name].append((cid, t0, t1))
                    time.sleep(0.05)
        events = sorted(tracer.events, key=lambda e: e.ts)

        print(f"start-to-exit latency of `ctr run --rm`, {args.runs} interleaved runs (ms)")
        for name, samples in times.items():
            median, p90 = _stats(samples)
            print(f"  {name:12s} median {median:7.1f}   p90 {p90:7.1f}")
        w = statistics.median(times["wasm"])
        print(f"  ratio wasm/runc        {w / statistics.median(times['runc']):.2f}")
        print(f"  ratio wasm/wasmtime-py {w / statistics.median(times['wasmtime-py']):.2f}")

        print("phases, median ms (kernel exec/fork/exit events)")
        table: dict[str, dict[str, float]] = {}
        for name, native in (("wasm", False), ("runc", True)):
            per_run = [
                phases([e for e in events if t0 <= e.ts <= t1], cid, native)
                for cid, t0, t1 in runs[name]
            ]
            found = [r for r in per_run if r is not None]
            table[name] = {ph: statistics.median(r[ph] for r in found) for ph in PHASES}
            table[name]["(runs traced)"] = len(found)
        print(f"  {'phase':28s} {'wasm':>8s} {'runc':>8s}")
        for ph in (*PHASES, "(runs traced)"):
            print(f"  {ph:28s} {table['wasm'][ph]:8.1f} {table['runc'][ph]:8.1f}")

        print(f"throughput, {args.tasks} lifecycles, {args.parallel} at a time (tasks/s)")
        rates = {}
        for name in ("wasm", "runc"):
            fn = runners[name]
            with ThreadPoolExecutor(args.parallel) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda _, run=fn: run(), range(args.tasks)))
                rates[name] = args.tasks / (time.perf_counter() - t0)
            print(f"  {name:12s} {rates[name]:7.2f}")
        print(f"  ratio wasm/runc        {rates['wasm'] / rates['runc']:.2f}")

        print(f"memory, {args.idle} idle containers of each kind (PSS, all their processes)")
        per_container = {}
        for name in ("wasm", "runc"):
            ids = [f"idle-{name}-{i}" for i in range(args.idle)]
            for cid in ids:
                if name == "wasm":
                    cmd = ("run", "-d", "--runtime", RUNTIME, WASM_IMAGE, cid, "/sleep.wasm")
                else:
                    cmd = ("run", "-d", "--runtime", RUNC, SIDECAR_IMAGE, cid)
                _check(cd.ctr(*cmd, check=False), f"{name} idle run")
            time.sleep(2)
            procs = processes_of(cd, "wasmtime" if name == "wasm" else "runc-v2")
            total = sum(pss_kib(pid) for pid in procs)
            per_container[name] = total / args.idle / 1024
            print(
                f"  {name:12s} {per_container[name]:6.2f} MiB per container "
                f"({len(procs)} processes, {total / 1024:.0f} MiB in all)"
            )
            for cid in ids:
                cd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            for cid in ids:
                for _ in range(100):
                    if cd.ctr("task", "delete", cid, check=False).returncode == 0:
                        break
                    time.sleep(0.05)
                cd.ctr("container", "delete", cid, check=False)
        print(f"  ratio wasm/runc        {per_container['wasm'] / per_container['runc']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
