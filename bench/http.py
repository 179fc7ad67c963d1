"""HTTP requests/s and p99 latency of a WAGI hello handler served by this shim, against a
native static server (busybox httpd) in runc, measured in the same run on one containerd.

- wagi: tests/wasm/c/wagi.c's `/hello` (a C program, clang + wasi-libc) in a wasm container
  marked `wasmtime.containerd.io/http=wagi` (io.containerd.wasmtime.v1): every request runs
  the program in a fresh instance;
- busybox: `busybox httpd` serving a file with the same 16-byte body, in a runc container
  (io.containerd.runc.v2, `ctr run --rootfs` of a directory holding busybox-static);
- in-process: the handler's own cost, the same program instantiated and run in this
  process without HTTP (runtimes/wasmtime/http/handler.py), to show where the time goes.

Both containers join one network namespace of the bench's own (tests/netns.py), and the
client runs inside it: wrk (`-c CONNECTIONS -t 2 --latency`, Debian's wrk) for `--duration`
seconds per round, the two servers alternating for `--rounds` rounds (medians reported);
without wrk, tests/httpload.py. busybox httpd answers HTTP/1.0 and closes every connection;
the WAGI server keeps connections alive: each server as it serves its clients.

Run as root:
    .venv/bin/python -m bench.http [--rounds 3] [--duration 10] [--connections 16] [--frozen]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.containerd import RUNTIME, PrivateContainerd
from tests.netns import NetNs, private_netns
from tests.wasm.build import build_c
from wasmtime_shim.images.build import CTR_IMPORT_FLAGS, ImageConfig, build_image

WAGI_IMAGE = "docker.io/library/bench-wagi:wasm"
RUNC = "io.containerd.runc.v2"
WAGI_PORT = 8080
BUSYBOX_PORT = 8081
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
BODY = b"hello from wagi\n"  # what wagi.c's /hello answers


def wrk(netns: NetNs, url: str, duration: float, connections: int) -> dict[str, float]:
    out = netns.run(
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        url,
        timeout=duration + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    assert p99 is not None, text
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "errors": errors}


def pyclient(netns: NetNs, url: str, duration: float, connections: int) -> dict[str, float]:
    requests = max(connections, int(duration * 500))
    out = netns.run(
        sys.executable,
        "-m",
        "tests.httpload",
        url,
        "--requests",
        str(requests),
        "--concurrency",
        str(connections),
        timeout=duration * 20 + 60,
    )
    result = json.loads(out.stdout)
    errors = sum(result["errors"].values()) + sum(
        n for status, n in result["statuses"].items() if status != "200"
    )
    return {"rps": result["requests_per_second"], "p99_ms": result["p99_ms"], "errors": errors}


def in_process(wasm: Path, seconds: float) -> float:
    """Handler calls per second in this process: instantiate + run + capture, no HTTP."""
    from runtimes.base import HttpMode, HttpServing, Preopen, RunConfig
    from runtimes.wasmtime.http.handler import Handler
    from runtimes.wasmtime.runtime import WasmtimeRuntime

    with tempfile.TemporaryDirectory() as root:
        Path(root, "bin").mkdir()
        shutil.copy(wasm, Path(root, "bin", "wagi.wasm"))
        cfg = RunConfig(
            container_id="bench",
            rootfs=root,
            args=("/bin/wagi.wasm",),
            env=(),
            cwd="/",
            preopens=(Preopen(root, "/", True),),
            http=HttpServing(HttpMode.WAGI, WAGI_PORT, 30.0, 1),
        )
        runtime = WasmtimeRuntime()
        runtime.warm()
        entry = runtime.resolve(cfg, None)
        handler = Handler(cfg, entry, runtime.load(cfg, entry, None))
        env = [("PATH_INFO", "/hello"), ("REQUEST_METHOD", "GET")]
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            result = handler.call(env, b"")
            assert result.output.endswith(BODY), result
            calls += 1
        return calls / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per round and server")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--frozen", action="store_true", help="the PyInstaller binary, not the venv")
    args = p.parse_args(argv)
    if not BUSYBOX.exists():
        print(f"{BUSYBOX} is missing (Debian package busybox-static)", file=sys.stderr)
        return 1
    client = wrk if shutil.which("wrk") else pyclient
    shim = None
    if args.frozen:
        built = subprocess.run(
            [sys.executable, "packaging/build.py"], capture_output=True, text=True, check=True
        )
        shim = Path(built.stdout.strip().splitlines()[-1])
        print(f"shim: {shim}")
    wasm = build_c("wagi")
    results: dict[str, list[dict[str, float]]] = {"wagi": [], "busybox": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        PrivateContainerd(log_level="warn", shim=shim) as cd,
        private_netns("bench-http") as netns,
    ):
        image = build_image(
            {"/bin/wagi.wasm": wasm},
            ref=WAGI_IMAGE,
            config=ImageConfig(entrypoint=("/bin/wagi.wasm",)),
        )
        cd.ctr("image", "import", *CTR_IMPORT_FLAGS, str(image.write(Path(tmp) / "w.tar")))
        # cgroupsPath is /<namespace>/<id>, one tree for every containerd on the machine
        ids = {name: f"bench-{name}-{os.getpid()}" for name in ("wagi", "busybox")}
        rootfs = Path(tmp) / "busybox"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "www").mkdir()
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "www" / "hello").write_bytes(BODY)
        cd.ctr(
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            f"network:{netns.path}",
            "--annotation",
            "wasmtime.containerd.io/http=wagi",
            "--annotation",
            f"wasmtime.containerd.io/http-port={WAGI_PORT}",
            "--log-uri",
            f"file://{tmp}/wagi.log",
            WAGI_IMAGE,
            ids["wagi"],
        )
        cd.ctr(
            "run",
            "-d",
            "--runtime",
            RUNC,
            "--with-ns",
            f"network:{netns.path}",
            "--rootfs",  # a flag: the first argument is then the directory
            str(rootfs),
            ids["busybox"],
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            str(BUSYBOX_PORT),
            "-h",
            "/www",
        )
        try:
            urls = {
                "wagi": f"http://127.0.0.1:{WAGI_PORT}/hello",
                "busybox": f"http://127.0.0.1:{BUSYBOX_PORT}/hello",
            }
            for name, url in urls.items():  # warm-up, and a check that each answers
                check = netns.run("curl", "-sf", url, timeout=30)
                if check.stdout.encode() != BODY:
                    raise RuntimeError(f"{name} answered {check.stdout!r} {check.stderr!r}")
                client(netns, url, 1.0, args.connections)
            for _ in range(args.rounds):
                for name, url in urls.items():
                    results[name].append(client(netns, url, args.duration, args.connections))
        finally:
            for cid in ids.values():
                cd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
                for _ in range(100):
                    listed = cd.ctr("task", "ls", check=False).stdout
                    if f"{cid} " not in listed or "STOPPED" in listed.split(cid, 1)[1][:60]:
                        break
                    time.sleep(0.1)
                cd.ctr("task", "delete", "-f", cid, check=False)
                cd.ctr("container", "rm", cid, check=False)
    handler_rate = in_process(wasm, min(args.duration, 5.0))
    name_of_client = "wrk" if client is wrk else "tests/httpload.py"
    print(
        f"hello handler, {args.connections} connections, {args.rounds} rounds of "
        f"{args.duration:g} s each ({name_of_client}), medians"
    )
    for name, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        errors = int(sum(r["errors"] for r in runs))
        print(f"  {name:8} {rps:9.0f} requests/s   p99 {p99:7.2f} ms   errors {errors}")
    wagi = statistics.median(r["rps"] for r in results["wagi"])
    busybox = statistics.median(r["rps"] for r in results["busybox"])
    p99_wagi = statistics.median(r["p99_ms"] for r in results["wagi"])
    p99_bb = statistics.median(r["p99_ms"] for r in results["busybox"])
    print(f"  ratio wagi/busybox  requests/s {wagi / busybox:.2f}   p99 {p99_wagi / p99_bb:.2f}")
    print(
        f"in-process, one thread: {handler_rate:.0f} handler calls/s "
        f"({1e3 / handler_rate:.3f} ms each: new Store, instantiate, run, capture stdout)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
