#!/usr/bin/env python3
"""How long containerd waits for `containerd-shim-wasmtime-v1 start`: frozen binary vs venv.

    .venv/bin/python bench/start_latency.py [--runs 20] [--modes onedir,onefile]

containerd runs the binary at least twice per container (`start`, then `delete`) and waits
for each, so the frozen binary's own start-up (onefile unpacks itself to a temp dir on every
run; onedir only maps its files) is paid on the critical path of every container start.

What is timed: one `start` as containerd runs it (same flags, cwd = a bundle directory), on
the path where the group's socket already has a live listener (this script holds one), so
the command does its whole job (parse flags, read config.json, compute and probe the socket,
write `address`, print it) but spawns no daemon (the daemon is forked, and its own start-up is
measured by bench/ctr_run.py as part of a whole `ctr run`). `-v` is timed too (interpreter
and bootstrap only).
Each variant runs `--runs` times, interleaved; the median is printed with the ratio to the
venv entry point. Needs root (the socket lives in /run/containerd/s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shim.manager import socket_address  # noqa: E402

NAME = "containerd-shim-wasmtime-v1"
NAMESPACE = "bench"
ADDRESS = "/run/containerd/bench-start-latency.sock"


def _build(mode: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build.py"), "--mode", mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _time(cmd: list[str], cwd: Path, expect: str) -> float:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TTRPC_ADDRESS": ADDRESS + ".ttrpc"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or expect not in out.stdout:
        raise RuntimeError(f"{cmd} failed ({out.returncode}): {out.stdout!r} {out.stderr!r}")
    return elapsed


def measure(variants: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    """{variant: {"start": median s, "-v": median s}} over `runs` interleaved runs each."""
    bundle = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    container_id = f"bench-{os.getpid()}"
    address = socket_address(ADDRESS, NAMESPACE, container_id)
    path = address[len("unix://") :]
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4096)
    flags = ["-namespace", NAMESPACE, "-address", ADDRESS, "-publish-binary", "/bin/true"]
    samples: dict[str, dict[str, list[float]]] = {v: {"start": [], "-v": []} for v in variants}
    try:
        for binary in variants.values():  # warm the page cache once
            _time([binary, *flags, "-id", container_id, "start"], bundle, address)
        for _ in range(runs):
            for name, binary in variants.items():
                start = [binary, *flags, "-id", container_id, "start"]
                samples[name]["start"].append(_time(start, bundle, address))
                samples[name]["-v"].append(_time([binary, "-v"], bundle, "Version"))
                _drain(listener)
    finally:
        listener.close()
        os.unlink(path)
        shutil.rmtree(bundle, ignore_errors=True)
    return {
        name: {what: statistics.median(values) for what, values in per.items()}
        for name, per in samples.items()
    }


def _drain(listener: socket.socket) -> None:
    """Accept and close the probe connections `start` made, so the backlog never fills."""
    listener.setblocking(False)
    try:
        while True:
            conn, _ = listener.accept()
            conn.close()
    except BlockingIOError:
        pass
    finally:
        listener.setblocking(True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--modes", default="onedir,onefile", help="frozen modes to build and time")
    args = p.parse_args(argv)
    venv = Path(sys.prefix) / "bin" / NAME
    variants = {"venv": str(venv)}
    for mode in filter(None, args.modes.split(",")):
        variants[mode] = str(_build(mode))
    results = measure(variants, args.runs)
    base = results["venv"]
    print(f"`{NAME} start` and `-v`, median of {args.runs} runs each")
    print(f"{'variant':<10} {'start ms':>9} {'ratio':>6} {'-v ms':>8} {'ratio':>6}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['start'] * 1e3:9.1f} {r['start'] / base['start']:6.2f}"
            f" {r['-v'] * 1e3:8.1f} {r['-v'] / base['-v']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
