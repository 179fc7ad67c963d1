"""The test bed itself: wasm test programs, the private containerd, image import, leak checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime

from tests.containerd import LeakKind, PrivateContainerd, sweep_stale
from tests.prereq import require
from tests.wasm import build
from wasmtime_shim.images.build import ImageConfig, build_image

# ------------------------------------------------------------------ wasm programs


@dataclass(frozen=True)
class WasmRun:
    exit_code: int | None  # None: trapped
    stdout: str
    stderr: str
    trap: str = ""


def run_wasm(
    path: Path,
    argv: Sequence[str],
    tmp_path: Path,
    *,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    preopen: Path | None = None,
    memory_limit: int | None = None,
) -> WasmRun:
    """Run a module in-process with wasmtime-py, capturing its stdio in files."""
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(path))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    if memory_limit is not None:
        store.set_limits(memory_size=memory_limit)
    config = wasmtime.WasiConfig()
    config.argv = list(argv)
    if env:
        config.env = list(env.items())
    (tmp_path / "stdin").write_bytes(stdin)
    config.stdin_file = str(tmp_path / "stdin")
    config.stdout_file = str(tmp_path / "stdout")
    config.stderr_file = str(tmp_path / "stderr")
    if preopen is not None:
        config.preopen_dir(str(preopen), "/")
    store.set_wasi(config)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    code: int | None = 0
    trap = ""
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        code = exc.code
    except wasmtime.Trap as exc:
        code, trap = None, str(exc)
    return WasmRun(
        code,
        (tmp_path / "stdout").read_text(errors="replace"),
        (tmp_path / "stderr").read_text(errors="replace"),
        trap,
    )


@pytest.mark.parametrize("name", build.programs())
def test_each_program_builds_to_valid_wasm(name: str, build_wasm: Callable[[str], Path]) -> None:
    path = build_wasm(name)
    assert path.read_bytes()[:4] == b"\0asm"
    wasmtime.Module.validate(wasmtime.Engine(), path.read_bytes())
    assert build_wasm(name) == path  # cached by source hash


def test_all_expected_programs_exist() -> None:
    expected = {"hello", "env", "cat", "files", "sleep", "spin", "trap", "membomb"}
    assert expected <= set(build.programs())


def test_hello_prints_argv_and_exits_with_argv1(
    build_wasm: Callable[[str], Path], tmp_path: Path
) -> None:
    run = run_wasm(build_wasm("hello"), ["hello.wasm", "7"], tmp_path)
    assert run.exit_code == 7
    assert run.stdout == "hello from wasm\nargv[0]=hello.wasm\nargv[1]=7\n"


def test_env_prints_exactly_its_environment(
    build_wasm: Callable[[str], Path], tmp_path: Path
) -> None:
    run = run_wasm(build_wasm("env"), ["env"], tmp_path, env={"A": "1", "B": "two words"})
    assert (run.exit_code, run.stdout) == (0, "A=1\nB=two words\n")


def test_cat_copies_stdin(build_wasm: Callable[[str], Path], tmp_path: Path) -> None:
    data = b"line one\n" + bytes(range(256)) * 40
    run_wasm(build_wasm("cat"), ["cat"], tmp_path, stdin=data)
    assert (tmp_path / "stdout").read_bytes() == data


def test_files_reads_writes_lists_and_reports_errno(
    build_wasm: Callable[[str], Path], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    files = build_wasm("files")

    def run(*argv: str) -> WasmRun:
        out = tmp_path / "io"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        return run_wasm(files, ["files", *argv], out, preopen=root)

    assert run("write", "/a.txt", "alpha").exit_code == 0
    assert (root / "a.txt").read_text() == "alpha"
    assert run("append", "/a.txt", "+").exit_code == 0
    assert run("read", "/a.txt").stdout == "alpha+"
    assert run("mkdir", "/d").exit_code == 0
    assert run("list", "/").stdout == "a.txt\nd\n"
    missing = run("read", "/nope")
    assert missing.exit_code == 1
    assert missing.stderr == "files: read /nope: No such file or directory\n"
    assert run("bogus").exit_code == 2


def test_sleep_zero_returns(build_wasm: Callable[[str], Path], tmp_path: Path) -> None:
    run = run_wasm(build_wasm("sleep"), ["sleep", "0"], tmp_path)
    assert (run.exit_code, run.stdout) == (0, "sleeping 0\nslept\n")


def test_trap_traps(build_wasm: Callable[[str], Path], tmp_path: Path) -> None:
    run = run_wasm(build_wasm("trap"), ["trap"], tmp_path)
    assert run.exit_code is None
    assert "unreachable" in run.trap
    assert run.stdout == "about to trap\n"


def test_membomb_grows_until_the_memory_limit(
    build_wasm: Callable[[str], Path], tmp_path: Path
) -> None:
    run = run_wasm(build_wasm("membomb"), ["membomb"], tmp_path, memory_limit=16 << 20)
    lines = run.stdout.splitlines()
    assert lines[0] == "allocated 1 MiB"
    assert lines[-1].startswith("malloc failed after ")
    assert run.exit_code == 1
    assert 8 <= len(lines) - 1 < 16


# ------------------------------------------------------------------ containerd


def test_containerd_answers_version(containerd: PrivateContainerd) -> None:
    out = containerd.ctr("version").stdout
    assert "Server:" in out
    assert containerd.address.is_socket()
    assert (containerd.bin_dir / "containerd-shim-wasmtime-v1").resolve() == (
        containerd.shim.resolve()
    )


def test_config_disables_cri_unless_asked(tmp_path: Path) -> None:
    off = PrivateContainerd(tmp_path / "a").config_toml()
    on = PrivateContainerd(tmp_path / "b", cri=True).config_toml()
    assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in off
    assert "disabled_plugins = []" in on
    assert f'address = "{tmp_path / "a" / "c.sock.ttrpc"}"' in off


def test_built_image_imports_and_is_listed(
    containerd: PrivateContainerd, ns: str, build_wasm: Callable[[str], Path], tmp_path: Path
) -> None:
    ref = "docker.io/library/testbed-hello:latest"
    built = build_image(
        {"/hello.wasm": build_wasm("hello")},
        ref=ref,
        config=ImageConfig(entrypoint=("/hello.wasm",)),
    )
    out = containerd.import_image(built.write(tmp_path / "hello.tar"), namespace=ns)
    assert built.manifest_digest in out
    listing = containerd.ctr("images", "ls", namespace=ns).stdout.splitlines()
    [row] = [line.split() for line in listing[1:] if line.startswith(ref + " ")]
    assert row[2] == built.manifest_digest
    assert "wasip1/wasm" in row
    snapshots = containerd.ctr("snapshots", "ls", namespace=ns).stdout
    assert built.diff_id in snapshots  # unpacked: the committed snapshot is named by chain id


NATIVE_SOURCE = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "pause") == 0) { pause(); }
    printf("native %s\n", argc > 1 ? argv[1] : "");
    return argc > 2 ? 3 : 0;
}
"""


@pytest.fixture(scope="module")
def native_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs holding one static x86-64 binary ``/native`` (no images needed)."""
    clang = shutil.which("clang") or shutil.which("clang-14")
    require(clang is not None, "clang is missing (Debian package clang)")
    assert clang is not None
    work = tmp_path_factory.mktemp("native")
    (work / "native.c").write_text(NATIVE_SOURCE)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    subprocess.run(
        [clang, "-static", "-O2", str(work / "native.c"), "-o", str(rootfs / "native")],
        check=True,
    )
    return rootfs


def test_runc_runs_a_native_rootfs(
    containerd: PrivateContainerd, ns: str, native_rootfs: Path
) -> None:
    ok = containerd.ctr(
        "run", "--rm", "--rootfs", str(native_rootfs), "n1", "/native", "hi", namespace=ns
    )
    assert ok.stdout.replace("\r", "") == "native hi\n"
    failed = containerd.ctr(
        "run",
        "--rm",
        "--rootfs",
        str(native_rootfs),
        "n2",
        "/native",
        "a",
        "b",
        namespace=ns,
        check=False,
    )
    assert failed.returncode == 3


def test_leaks_see_a_live_shim_and_its_socket(
    containerd: PrivateContainerd, ns: str, native_rootfs: Path
) -> None:
    """A running runc task is, for the leak finder, exactly what a leaked shim looks like."""
    containerd.ctr(
        "run", "-d", "--rootfs", str(native_rootfs), "paused", "/native", "pause", namespace=ns
    )
    found = containerd.leaks(ns)
    kinds = {leak.kind for leak in found}
    assert {LeakKind.PROCESS, LeakKind.SOCKET, LeakKind.BUNDLE} <= kinds, found
    assert containerd.shim_socket(ns, "paused").is_socket()
    assert any(leak.what == str(containerd.shim_socket(ns, "paused")) for leak in found)
    assert containerd.leaks("some-other-namespace") == []

    containerd.ctr("tasks", "kill", "-s", "SIGKILL", "paused", namespace=ns)
    containerd.ctr("tasks", "delete", "paused", namespace=ns, timeout=30)
    containerd.ctr("containers", "delete", "paused", namespace=ns)
    assert containerd.wait_for_no_leaks(ns) == []


def test_clean_removes_fake_leaks(containerd: PrivateContainerd, ns: str, tmp_path: Path) -> None:
    """Leaks the finder must report and clean: a stray process, a mount, a socket."""
    stray = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(600)",
            "-namespace",
            ns,
            "-address",
            str(containerd.address),
            "-id",
            "ghost",
        ],
    )
    bundle = containerd.state / "io.containerd.runtime.v2.task" / ns / "ghost"
    (bundle / "rootfs").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(bundle / "rootfs")], check=True)
    socket_path = containerd.shim_socket(ns, "ghost")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.write_bytes(b"")
    try:
        found = {(leak.kind, leak.what.split()[0]) for leak in containerd.leaks(ns)}
        assert found == {
            (LeakKind.PROCESS, str(stray.pid)),
            (LeakKind.MOUNT, str(bundle / "rootfs")),
            (LeakKind.BUNDLE, str(bundle)),
            (LeakKind.SOCKET, str(socket_path)),
        }
        assert len(containerd.clean(ns)) == 4
        assert stray.wait(timeout=30) == -9
        assert containerd.leaks(ns) == []
        assert not socket_path.exists() and not bundle.exists()
    finally:
        stray.kill()
        stray.wait()
        subprocess.run(["umount", "-l", str(bundle / "rootfs")], check=False, capture_output=True)
        socket_path.unlink(missing_ok=True)
        shutil.rmtree(bundle, ignore_errors=True)


def test_a_private_containerd_stops_clean(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Start/stop a second instance: a fresh base, nothing to clean, base dir removed."""
    request.getfixturevalue("containerd")  # the same prerequisites (skip/fail) apply
    instance = PrivateContainerd()
    with instance:
        assert instance.running
        assert instance.leaks() == []
    assert instance.stop_report == []
    assert not instance.base.exists()


def test_sweep_removes_dead_instances_only(request: pytest.FixtureRequest) -> None:
    live: PrivateContainerd = request.getfixturevalue("containerd")
    parent = live.base.parent
    dead = Path(tempfile.mkdtemp(prefix="c-", dir=parent))
    (dead / "state" / "io.containerd.runtime.v2.task" / "ns1" / "gone").mkdir(parents=True)
    old = time.time() - 3600
    os.utime(dead, (old, old))
    os.utime(live.base, (old, old))
    cleaned = sweep_stale()
    assert not dead.exists()
    assert any(
        leak.what == str(dead / "state/io.containerd.runtime.v2.task/ns1/gone") for leak in cleaned
    )
    assert live.base.exists() and live.running
