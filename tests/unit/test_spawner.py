"""The spawner (shim/proc/) against failures: nothing one container does may end the others,
and nothing the spawner does (or suffers) may take a running container down.

Each scenario runs in a fresh interpreter that plays the pod daemon (a child subreaper with a
reaper, as the real daemon is) with the real spawner, the real container-process code and the
real wasmtime runtime, and prints what it saw as JSON; no containerd is involved.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRELUDE = r"""
import asyncio, json, os, signal, sys, tempfile
import wasmtime
from runtimes.base import Entrypoint, EntrypointKind, Preopen, RunConfig
from runtimes.wasmtime import WasmtimeRuntime
from shim import libc
from shim.errors import ShimError
from shim.proc.child import ProcessSetup
from shim.proc.client import SpawnerClient
from shim.proc.reaper import Reaper
from shim.proc.spawner import fork_spawner

libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)  # as the daemon
root = tempfile.mkdtemp()
PROGRAMS = {
    "spin.wat": '(module (func (export "_start") (loop $l (br $l))))',
    "loop_start.wat": '(module (func $l (loop $x (br $x))) (start $l) (func (export "_start")))',
    "exit7.wat": '''(module (import "wasi_snapshot_preview1" "proc_exit" (func $e (param i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff"
          (func $p (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "_start")
          ;; sleep 300 ms (one relative clock subscription), then exit 7
          (i64.store (i32.const 24) (i64.const 300000000))
          (drop (call $p (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
          (call $e (i32.const 7))))''',
}
for name, text in PROGRAMS.items():
    with open(os.path.join(root, name), "w") as f:
        f.write(text)
ENV = ()
OUT = os.path.join(root, "stdout")

def cfg(arg):
    return RunConfig(container_id="c", rootfs=root, args=(arg,), env=ENV, cwd="/",
                     preopens=(Preopen(root, "/", True),))

def entry(name, func=None, kind=EntrypointKind.WAT):
    return Entrypoint(host_path=os.path.join(root, name), guest_path="/" + name, func=func,
                      kind=kind)

async def start_spawner():
    reaper = Reaper()
    reaper.start()
    pid, sock = fork_spawner(WasmtimeRuntime())
    reaper.claim(pid)
    client = SpawnerClient(pid, sock, reaper)
    client.start()
    return pid, client

async def spawn(client, name, func=None, kind=EntrypointKind.WAT, path=None):
    fds = [os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC),
           os.open(path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600),
           os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)]
    try:
        return await client.spawn(cfg("/" + name), entry(name, func, kind),
                                  ProcessSetup(host_cwd=root), fds)
    finally:
        for fd in fds:
            os.close(fd)

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
"""

HUGE_ERROR = r"""
funcs = " ".join(f'(func (export "exported_function_with_a_long_name_{i:06d}"))'
                 for i in range(9000))
with open(os.path.join(root, "many.wasm"), "wb") as f:
    f.write(wasmtime.wat2wasm(f"(module {funcs})"))

async def main():
    zpid, client = await start_spawner()
    a = await spawn(client, "spin.wat")
    await a.ready
    bad = await spawn(client, "many.wasm", "missing", EntrypointKind.MODULE)
    try:
        await bad.ready
        error = None
    except ShimError as e:
        error = [type(e).__name__, len(str(e)), str(e)[:60]]
    b = await spawn(client, "spin.wat")
    await b.ready
    result = {"error": error, "spawner": alive(zpid), "a": alive(a.pid), "b": alive(b.pid),
              "bad_exit": await bad.exited}
    await client.kill(a.pid, signal.SIGKILL)
    await client.kill(b.pid, signal.SIGKILL)
    result["exits"] = sorted([await a.exited, await b.exited])
    print(json.dumps(result))
    os.kill(zpid, signal.SIGKILL)

asyncio.run(main())
"""

SPAWNER_DIES = r"""
async def main():
    zpid, client = await start_spawner()
    spin = await spawn(client, "spin.wat")
    await spin.ready
    sleeper = await spawn(client, "exit7.wat")
    await sleeper.ready
    os.kill(zpid, signal.SIGKILL)
    # The spawner is gone; its children are ours (subreaper) and go on running.
    await asyncio.sleep(0.1)
    both_alive = alive(spin.pid) and alive(sleeper.pid)
    sleeper_status = await asyncio.wait_for(sleeper.exited, 10)  # its own exit, reported
    await client.kill(spin.pid, signal.SIGKILL)  # still killable, through the reaper's pidfd
    spin_status = await asyncio.wait_for(spin.exited, 10)
    try:
        await spawn(client, "spin.wat")
        later = None
    except ShimError as e:
        later = type(e).__name__
    print(json.dumps({"both_alive": both_alive, "sleeper": sleeper_status, "spin": spin_status,
                      "later": later}))

asyncio.run(main())
"""

NEVER_READY = r"""
async def main():
    zpid, client = await start_spawner()
    p = await spawn(client, "loop_start.wat")  # its start function never returns
    await asyncio.sleep(0.3)
    waiting = not p.ready.done() and alive(p.pid)
    await client.kill(p.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(p.ready, 5)
        ready = "ready"
    except ShimError as e:
        ready = type(e).__name__
    print(json.dumps({"waiting": waiting, "ready": ready,
                      "exit": await asyncio.wait_for(p.exited, 5)}))
    os.kill(zpid, signal.SIGKILL)

asyncio.run(main())
"""

BIG_ENV = r"""
# Kubernetes service links can give a pod a megabyte of environment.
ENV = tuple(f"SERVICE_{i:05d}_PORT=tcp://127.0.0.1:{i}" + "x" * 80 for i in range(9000))

async def main():
    zpid, client = await start_spawner()
    p = await spawn(client, os.path.basename(sys.argv[1]), kind=EntrypointKind.MODULE, path=OUT)
    status = await asyncio.wait_for(p.exited, 60)
    with open(OUT) as f:
        seen = [line for line in f.read().splitlines() if line.startswith("SERVICE_")]
    print(json.dumps({"size": sum(map(len, ENV)), "status": status,
                      "seen": len(seen), "same": seen == list(ENV)}))
    os.kill(zpid, signal.SIGKILL)

import shutil
shutil.copy(sys.argv[1], root)
asyncio.run(main())
"""


REPLACED = r"""
from shim.options import ShimOptions
from shim.proc.spawner import SpawnerCommand

OPTS = ShimOptions(namespace="n", address="/run/none", publish_binary="", id="t", bundle="",
                   debug=False)

def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

async def started(command):
    reaper = Reaper()
    reaper.start()
    pid, sock = fork_spawner(WasmtimeRuntime())
    reaper.claim(pid)
    client = SpawnerClient(pid, sock, reaper, command)
    client.start()
    return client

async def kill_spawner(client):
    # SIGKILL the client's spawner and let the client notice (a spawn sent to a spawner in
    # its last moments fails: it may have forked, so it is never sent again).
    pid = client.pid
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)

async def error_of(client):
    try:
        await spawn(client, "exit7.wat")
        return None
    except ShimError as e:
        return [type(e).__name__, str(e)]

async def main():
    command = SpawnerCommand.of_daemon(OPTS, root)
    client = await started(command)
    first = client.pid
    spin = await spawn(client, "spin.wat")
    await spin.ready
    await kill_spawner(client)
    result = {"spin_alive_after": alive(spin.pid)}
    later = await spawn(client, "exit7.wat")  # waits for the new spawner's hello
    second = client.pid
    result["second_is_new_child_of_ours"] = second != first and ppid(second) == os.getpid()
    result["later_forked_by_second"] = ppid(later.pid) == second
    result["later_exit"] = await asyncio.wait_for(later.exited, 30)
    await client.kill(spin.pid, signal.SIGKILL)  # the first spawner's child: the reaper's
    result["spin_exit"] = await asyncio.wait_for(spin.exited, 10)
    await kill_spawner(client)  # a replacement is replaced too
    again = await spawn(client, "exit7.wat")
    result["third_exit"] = await asyncio.wait_for(again.exited, 30)
    third = client.pid
    client.close()
    await asyncio.sleep(0.2)
    result["all_spawners_gone"] = not any(alive(p) for p in (first, second, third))

    # Another build on disk: refused, and never tried again.
    other = SpawnerCommand(argv=command.argv, identity="0.0.0-another-build")
    client = await started(other)
    await kill_spawner(client)
    result["other_build"] = await error_of(client)
    result["identity"] = command.identity
    tried = client.pid
    result["other_build_again"] = await error_of(client)
    result["not_tried_again"] = client.pid == tried

    # A program that is no spawner at all, or none: each spawn says why it cannot start.
    quits = SpawnerCommand(argv=(sys.executable, "-c", "pass"), identity=command.identity)
    client = await started(quits)
    await kill_spawner(client)
    result["quits"] = await error_of(client)
    missing = SpawnerCommand(argv=("/nonexistent/shim", "spawner"), identity=command.identity)
    client = await started(missing)
    await kill_spawner(client)
    result["missing"] = await error_of(client)
    print(json.dumps(result))

asyncio.run(main())
"""


def _scenario(body: str, *args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_huge_start_error_is_cut_and_the_spawner_survives() -> None:
    result = _scenario(HUGE_ERROR)
    kind, length, head = result["error"]
    assert kind == "FailedPrecondition" and "missing" in head
    assert length < 20_000  # cut, so that it fits one datagram
    assert result["spawner"] and result["a"] and result["b"]
    assert result["bad_exit"] == 1
    assert result["exits"] == [137, 137]


def test_when_the_spawner_dies_its_containers_run_on_report_their_exits_and_stay_killable() -> None:
    result = _scenario(SPAWNER_DIES)
    assert result["both_alive"]
    assert result["sleeper"] == 7  # the real status, learned by the daemon's reaper
    assert result["spin"] == 137
    assert result["later"] == "Unavailable"


def test_a_dead_spawner_is_replaced_and_its_children_stay_reported_and_killable() -> None:
    """The daemon's case (it has a SpawnerCommand): the new spawner is started by exec of the
    shim's own program (here `python -m shim ... spawner`), is the daemon's child, forks the
    next containers; the old one's child is still killed through the reaper; a replacement
    is replaced in turn; nothing of it outlives close(). A spawner of another build is not
    used (and not retried); one that quits or cannot be run gives each spawn the reason."""
    result = _scenario(REPLACED)
    assert result["spin_alive_after"]
    assert result["second_is_new_child_of_ours"] and result["later_forked_by_second"]
    assert result["later_exit"] == 7 and result["third_exit"] == 7
    assert result["spin_exit"] == 137
    assert result["all_spawners_gone"]
    kind, message = result["other_build"]  # type: ignore[misc]
    assert kind == "Unavailable"
    assert f"another build ({result['identity']}) than this pod's daemon (0.0.0-" in message
    assert result["other_build_again"] == result["other_build"]
    assert result["not_tried_again"]
    assert result["quits"] == ["Unavailable", "a new spawner ended before it was ready"]
    kind, message = result["missing"]  # type: ignore[misc]
    assert kind == "Unavailable" and "cannot start a new spawner (/nonexistent/shim)" in message


def test_a_process_whose_start_function_never_returns_is_killed_before_it_is_ready() -> None:
    result = _scenario(NEVER_READY)
    assert result == {"waiting": True, "ready": "FailedPrecondition", "exit": 137}


def test_a_megabyte_of_environment_reaches_the_guest(build_wasm) -> None:  # type: ignore[no-untyped-def]
    result = _scenario(BIG_ENV, str(build_wasm("env")))
    assert result["size"] > 1_000_000
    assert result["status"] == 0
    assert result["seen"] == 9000 and result["same"]
