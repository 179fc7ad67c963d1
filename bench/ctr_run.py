"""`ctr run --rm` start-to-exit latency and task throughput: our shim against baselines.

Everything is measured in the same run, on one private containerd (tests/containerd.py):
- wasm: a hello-world wasm module through `io.containerd.wasmtime.v1` (this shim);
- runc: a static native hello world through `io.containerd.runc.v2` (containerd's own shim),
  the cost of an ordinary container on the same machine;
- wasmtime-py: the same module run by a fresh `python -c` with wasmtime-py (import, compile,
  instantiate, run), the cost of the engine alone outside containerd.
It prints medians and p90s (ms) and the ratios wasm/runc and wasm/wasmtime-py, then the
throughput of N containers run `--parallel` at a time (tasks/s) for both shims.

Run as root:  .venv/bin/python -m bench.ctr_run [--runs 20] [--tasks 40] [--parallel 4] [--frozen]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.containerd import RUNTIME, PrivateContainerd
from tests.pause.build import SIDECAR_IMAGE, sidecar_image
from tests.wasm.build import build_c
from wasmtime_shim.images.build import CTR_IMPORT_FLAGS, build_image

WASM_IMAGE = "docker.io/library/bench-hello:wasm"
RUNC = "io.containerd.runc.v2"


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="sequential runs per runtime")
    p.add_argument("--tasks", type=int, default=40, help="containers in the throughput test")
    p.add_argument("--parallel", type=int, default=4, help="containers at a time")
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
    with tempfile.TemporaryDirectory() as tmp, PrivateContainerd(log_level="warn", shim=shim) as cd:
        wasm_tar = build_image({"/hello.wasm": wasm}, ref=WASM_IMAGE).write(Path(tmp) / "w.tar")
        cd.ctr("image", "import", *CTR_IMPORT_FLAGS, str(wasm_tar))
        native_tar = sidecar_image().write(Path(tmp) / "n.tar")
        cd.ctr("image", "import", str(native_tar))
        counter = iter(range(1_000_000))

        def run_wasm() -> None:
            n = next(counter)
            cmd = ("run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, f"w{n}", "/hello.wasm")
            _check(cd.ctr(*cmd, check=False), "wasm run")

        def run_runc() -> None:
            n = next(counter)
            cmd = ("run", "--rm", "--runtime", RUNC, "--env", "SIDECAR_EXIT=0")
            _check(cd.ctr(*cmd, SIDECAR_IMAGE, f"n{n}", check=False), "runc run")

        code = (
            "import sys, wasmtime as w\n"
            "e = w.Engine(); s = w.Store(e); c = w.WasiConfig(); c.inherit_stdout()\n"
            "c.argv = ['hello']; s.set_wasi(c); l = w.Linker(e); l.define_wasi()\n"
            f"m = w.Module.from_file(e, {str(wasm)!r})\n"
            "try:\n    l.instantiate(s, m).exports(s)['_start'](s)\n"
            "except w.ExitTrap as x:\n    sys.exit(x.code)\n"
        )

        def run_direct() -> None:
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=False
            )
            _check(proc, "wasmtime-py")

        for fn in (run_wasm, run_runc, run_direct):  # warm caches (compile cache, page cache)
            fn()
        results = {}
        for name, fn in (("wasm", run_wasm), ("runc", run_runc), ("wasmtime-py", run_direct)):
            results[name] = _stats([_timed(fn) for _ in range(args.runs)])

        print(f"start-to-exit latency, {args.runs} sequential runs (ms)")
        for name, (median, p90) in results.items():
            print(f"  {name:12s} median {median:7.1f}   p90 {p90:7.1f}")
        w = results["wasm"][0]
        print(f"  ratio wasm/runc        {w / results['runc'][0]:.2f}")
        print(f"  ratio wasm/wasmtime-py {w / results['wasmtime-py'][0]:.2f}")

        print(f"throughput, {args.tasks} containers, {args.parallel} at a time (tasks/s)")
        rates = {}
        for name, fn in (("wasm", run_wasm), ("runc", run_runc)):
            with ThreadPoolExecutor(args.parallel) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda _, run=fn: run(), range(args.tasks)))
                rates[name] = args.tasks / (time.perf_counter() - t0)
            print(f"  {name:12s} {rates[name]:7.1f}")
        print(f"  ratio wasm/runc        {rates['wasm'] / rates['runc']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
