"""The fork server against failures: nothing one container does may end the others.

Each scenario runs in a fresh interpreter that plays the daemon (a child subreaper, as the
real daemon is) with the real zygote and the real wasmtime runtime, and prints what it saw
as JSON; no containerd is involved.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRELUDE = r"""
import asyncio, ctypes, json, os, signal, sys, tempfile
import wasmtime
from runtimes.base import Entrypoint, EntrypointKind, Preopen, RunConfig
from runtimes.wasmtime import WasmtimeRuntime
from shim import zygote as z
from shim.errors import ShimError

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, as the daemon
root = tempfile.mkdtemp()
with open(os.path.join(root, "spin.wat"), "w") as f:
    f.write('(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))')
exits = []

ENV = ()

def cfg(arg):
    return RunConfig(container_id="c", rootfs=root, args=(arg,), env=ENV, cwd="/",
                     preopens=(Preopen(root, "/", True),))

def entry(name, func=None, kind=EntrypointKind.WAT):
    return Entrypoint(host_path=os.path.join(root, name), guest_path="/" + name, func=func,
                      kind=kind)

async def spawn(client, name, func=None, kind=EntrypointKind.WAT):
    fds = [os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3)]
    try:
        pid = await client.spawn(cfg("/" + name), entry(name, func, kind),
                                 z.ProcessSetup(host_cwd=root), fds)
    finally:
        for fd in fds:
            os.close(fd)
    client.claim(pid)
    return pid

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
"""

HUGE_ERROR = r"""
funcs = " ".join(f'(func (export "exported_function_with_a_long_name_{i:06d}"))'
                 for i in range(9000))
with open(os.path.join(root, "many.wasm"), "wb") as f:
    f.write(wasmtime.wat2wasm(f"(module {funcs})"))

async def main():
    zpid, sock = z.fork_zygote(WasmtimeRuntime())
    client = z.ZygoteClient(zpid, sock, lambda pid, st: exits.append([pid, st]))
    client.start()
    a = await spawn(client, "spin.wat")
    try:
        await spawn(client, "many.wasm", "missing", EntrypointKind.MODULE)
        error = None
    except ShimError as e:
        error = [type(e).__name__, len(str(e)), str(e)[:60]]
    b = await spawn(client, "spin.wat")
    result = {"error": error, "zygote": alive(zpid), "a": alive(a), "b": alive(b)}
    await client.kill(a, signal.SIGKILL)
    await client.kill(b, signal.SIGKILL)
    await asyncio.sleep(0.5)
    result["exits"] = sorted(st for _, st in exits)
    print(json.dumps(result))
    os.kill(zpid, signal.SIGKILL)

asyncio.run(main())
"""

ZYGOTE_DIES = r"""
async def main():
    zpid, sock = z.fork_zygote(WasmtimeRuntime())
    client = z.ZygoteClient(zpid, sock, lambda pid, st: exits.append([pid, st]))
    client.start()
    a = await spawn(client, "spin.wat")
    os.kill(zpid, signal.SIGKILL)
    for _ in range(100):
        if exits:
            break
        await asyncio.sleep(0.05)
    try:
        await spawn(client, "spin.wat")
        later = None
    except ShimError as e:
        later = type(e).__name__
    print(json.dumps({"exits": exits, "a": a, "a_alive": alive(a), "later": later}))

asyncio.run(main())
"""


BIG_ENV = r"""
# Kubernetes service links can give a pod a megabyte of environment.
ENV = tuple(f"SERVICE_{i:05d}_PORT=tcp://127.0.0.1:{i}" + "x" * 80 for i in range(9000))

async def main():
    zpid, sock = z.fork_zygote(WasmtimeRuntime())
    client = z.ZygoteClient(zpid, sock, lambda pid, st: exits.append([pid, st]))
    client.start()
    a = await spawn(client, "spin.wat")
    result = {"size": sum(map(len, ENV)), "a": alive(a)}
    await client.kill(a, signal.SIGKILL)
    print(json.dumps(result))
    os.kill(zpid, signal.SIGKILL)

asyncio.run(main())
"""


def _scenario(body: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_huge_start_error_is_cut_and_the_zygote_survives() -> None:
    result = _scenario(HUGE_ERROR)
    kind, length, head = result["error"]
    assert kind == "FailedPrecondition" and "missing" in head
    assert length < 20_000  # cut, so that it fits one datagram
    assert result["zygote"] and result["a"] and result["b"]
    assert result["exits"] == [137, 137]


def test_when_the_zygote_dies_its_containers_exits_are_reported() -> None:
    result = _scenario(ZYGOTE_DIES)
    assert result["exits"] == [[result["a"], 137]]
    assert not result["a_alive"]
    assert result["later"] == "Unavailable"


def test_a_megabyte_of_environment_reaches_the_zygote() -> None:
    result = _scenario(BIG_ENV)
    assert result["size"] > 1_000_000
    assert result["a"]
