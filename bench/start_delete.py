#!/usr/bin/env python3
"""How long containerd waits for `start` and `delete`: the venv vs the frozen binary(ies).

    .venv/bin/python bench/start_delete.py [--runs 20] [--modes onedir,onefile]

containerd runs the binary twice per container (`start`, then `delete`, which containerd 1.6
runs after every shim disconnect, on `ctr run --rm`'s critical path) and waits for each, so
their own cost is paid on every container start. runc's shim takes ~13 ms for `delete`.

What is timed, per variant, as containerd runs them (same flags, cwd = a bundle):
- `start` on the usual path: a warm runtime answers (launched once before timing, one per
  variant: each build has its own), and the group's socket already has a live listener (this
  script holds one), so nothing is forked: the command's own cost plus one request;
- `delete` of a bundle with no held record (the usual case after a task's Delete);
- `-v` (interpreter and bootstrap only).
Each variant runs `--runs` times, interleaved; the median is printed with the ratio to the
venv entry point. Then `python -X importtime` of `start` and `delete` (venv): what they load
beyond the interpreter's own start-up, with the time each took. Needs root (the sockets live
in /run/containerd).
"""

from __future__ import annotations

import argparse
import contextlib
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

from shim.daemon import socket_address  # noqa: E402
from shim.warm import client  # noqa: E402

NAME = "containerd-shim-wasmtime-v1"
NAMESPACE = "bench"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def _build(mode: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build.py"), "--mode", mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _run(cmd: list[str], cwd: Path, expect: bytes, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or expect not in out.stdout:
        raise RuntimeError(f"{cmd} failed ({out.returncode}): {out.stdout!r} {out.stderr!r}")
    return elapsed


class Variant:
    """One binary, with a fake containerd address of its own and that address's runtime."""

    def __init__(self, name: str, binary: str, bundle: Path) -> None:
        self.name = name
        self.binary = binary
        self.bundle = bundle
        self.address = f"/run/containerd/bench-start-{name}-{os.getpid()}.sock"
        self.container_id = f"bench-{os.getpid()}"
        self.flags = ["-namespace", NAMESPACE, "-address", self.address, "-publish-binary", "/"]
        shim_address = socket_address(self.address, NAMESPACE, self.container_id)
        self.socket_path = shim_address[len("unix://") :]
        os.makedirs(os.path.dirname(self.socket_path), mode=0o711, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(4096)
        self.expect = shim_address.encode()

    def start(self) -> float:
        return _run(
            [self.binary, *self.flags, "-id", self.container_id, "start"], self.bundle, self.expect
        )

    def delete(self) -> float:
        cmd = [
            self.binary,
            *self.flags,
            "-id",
            self.container_id,
            "-bundle",
            str(self.bundle),
            "delete",
        ]
        return _run(cmd, self.bundle, b"\x10\x89\x01")  # exit_status 137

    def version(self) -> float:
        return _run([self.binary, "-v"], self.bundle, b"Version")

    def warm_up(self, timeout: float = 60.0) -> None:
        """The first start launches this variant's warm runtime; wait until it answers."""
        self.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.call(self.address, "ping", timeout=2)
                return
            except client.Unreachable:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no warm runtime for {self.name}") from None
                time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(client.Unreachable):
            client.call(self.address, "retire", timeout=5)
        self.listener.close()
        os.unlink(self.socket_path)


def measure(
    variants: dict[str, str], runs: int
) -> tuple[dict[str, dict[str, float]], dict[str, list[tuple[str, int]]]]:
    """{variant: {"start"|"delete"|"-v": median seconds}} over `runs` interleaved runs, and
    the venv's import times of `start` and `delete`."""
    bundle = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    (bundle / "config.json").write_text('{"process": {"args": ["/x.wasm"]}}')
    subjects = [Variant(name, binary, bundle) for name, binary in variants.items()]
    samples = {v.name: {"start": [], "delete": [], "-v": []} for v in subjects}
    try:
        for v in subjects:
            v.warm_up()
            v.delete(), v.version()  # the page cache
        for _ in range(runs):
            for v in subjects:
                samples[v.name]["start"].append(v.start())
                samples[v.name]["delete"].append(v.delete())
                samples[v.name]["-v"].append(v.version())
                _drain(v.listener)
        imports = {action: import_times(subjects[0], action) for action in ("start", "delete")}
        _drain(subjects[0].listener)
    finally:
        for v in subjects:
            v.close()
        shutil.rmtree(bundle, ignore_errors=True)
    medians = {n: {k: statistics.median(vs) for k, vs in per.items()} for n, per in samples.items()}
    return medians, imports


def _drain(listener: socket.socket) -> None:
    """Accept and close any probe connections, so the backlog never fills."""
    listener.setblocking(False)
    try:
        while True:
            conn, _ = listener.accept()
            conn.close()
    except BlockingIOError:
        pass
    finally:
        listener.setblocking(True)


def import_times(v: Variant, action: str) -> list[tuple[str, int]]:
    """(module, self µs) of what `action` imports beyond `python -c pass` (run it with
    PYTHONPROFILEIMPORTTIME, which the venv's interpreter honours)."""

    def imported(args: list[str]) -> dict[str, int]:
        env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1"}
        out = subprocess.run(args, env=env, capture_output=True, check=False, cwd=v.bundle)
        found = {}
        for line in out.stderr.decode(errors="replace").splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                self_us, _cum, name = (part.strip() for part in line[12:].split("|"))
                found[name] = int(self_us)
        return found

    base = imported([sys.executable, "-c", "pass"])
    args = [*v.flags, "-id", v.container_id, "-bundle", str(v.bundle), action]
    return [(name, us) for name, us in imported([v.binary, *args]).items() if name not in base]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--modes", default="onedir", help="frozen modes to build and time")
    args = p.parse_args(argv)
    venv = str(Path(sys.prefix) / "bin" / NAME)
    variants = {"venv": venv}
    for mode in filter(None, args.modes.split(",")):
        variants[mode] = str(_build(mode))
    results, imports = measure(variants, args.runs)
    base = results["venv"]
    print(f"`{NAME}` start / delete / -v, median of {args.runs} runs each (ms)")
    head = ("variant", "start", "ratio", "delete", "ratio", "-v", "ratio")
    print(f"{head[0]:<10}" + "".join(f" {h:>7}" for h in head[1:]))
    for name, r in results.items():
        print(
            f"{name:<10} {r['start'] * 1e3:7.1f} {r['start'] / base['start']:7.2f}"
            f" {r['delete'] * 1e3:7.1f} {r['delete'] / base['delete']:7.2f}"
            f" {r['-v'] * 1e3:7.1f} {r['-v'] / base['-v']:7.2f}"
        )
    for action, rows in imports.items():
        ours = sum(us for _, us in rows)
        print(
            f"\n`{action}` imports beyond `python -c pass` (venv, -X importtime): "
            f"{len(rows)} modules, {ours / 1000:.1f} ms"
        )
        for name, us in rows:
            print(f"  {us / 1000:6.2f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
