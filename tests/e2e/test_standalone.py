"""`wasmtime-shim run`: an image run on this machine without containerd, in a real process.

The command runs as a subprocess (the way a user runs it) with a private XDG_CACHE_HOME; the
guest is tests/wasm/c/files.c, which reads, writes and lists through WASI preopens.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.prereq import require
from tests.wasm import build
from wasmtime_shim.images.build import ImageConfig, build_image

REPO = Path(__file__).resolve().parents[2]
# The user-facing command, assembled from the modules this area owns (wasmtime_shim/main.py
# also registers modules of other areas; this keeps the test independent of them).
DRIVER = """
import argparse, sys
from shim.errors import ShimError
from wasmtime_shim import run
from wasmtime_shim.images import commands as image
p = argparse.ArgumentParser(prog="wasmtime-shim")
sub = p.add_subparsers(dest="command", required=True)
image.register(sub)
run.register(sub)
a = p.parse_args(sys.argv[1:])
try:
    sys.exit(a.func(a))
except ShimError as e:
    print(f"wasmtime-shim {a.command}: {e}", file=sys.stderr)
    sys.exit(1)
"""


def wasmtime_shim(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_CACHE_HOME": str(cache),
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def files_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = build.toolchain_problem()
    require(problem is None, problem or "")
    image = build_image(
        {"/bin/files.wasm": build.build_c("files"), "/etc/motd": b"from the image\n"},
        ref="docker.io/library/files:test",
        config=ImageConfig(entrypoint=("/bin/files.wasm",), cmd=("read", "/etc/motd")),
    )
    return image.write(tmp_path_factory.mktemp("standalone") / "files.tar")


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Path, Path]:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "input.txt").write_text("read me\n")
    return ro, rw


def test_runs_the_image_cmd_and_reads_its_rootfs(files_image: Path, tmp_path: Path) -> None:
    run = wasmtime_shim("run", str(files_image), cache=tmp_path / "cache")
    assert (run.returncode, run.stdout) == (0, "from the image\n"), run.stderr
    rootfs_dir = tmp_path / "cache" / "wasmtime-shim" / "rootfs"
    [unpacked] = [p for p in rootfs_dir.iterdir() if p.is_dir()]
    assert (unpacked / "etc" / "motd").read_text() == "from the image\n"


def test_read_only_and_read_write_volumes(
    files_image: Path, tmp_path: Path, volumes: tuple[Path, Path]
) -> None:
    ro, rw = volumes
    cache = tmp_path / "cache"
    mounts = ("-v", f"{ro}:/in:ro", "-v", f"{rw}:/out")

    read = wasmtime_shim(
        "run", *mounts, str(files_image), "--", "read", "/in/input.txt", cache=cache
    )
    assert (read.returncode, read.stdout) == (0, "read me\n"), read.stderr

    write = wasmtime_shim(
        "run", *mounts, str(files_image), "--", "write", "/out/new.txt", "hi", cache=cache
    )
    assert write.returncode == 0, write.stderr
    assert (rw / "new.txt").read_text() == "hi"

    refused = wasmtime_shim(
        "run", *mounts, str(files_image), "--", "write", "/in/input.txt", "x", cache=cache
    )
    assert refused.returncode == 1 and "files: write /in/input.txt" in refused.stderr
    assert (ro / "input.txt").read_text() == "read me\n"

    image_root = wasmtime_shim(
        "run", *mounts, str(files_image), "--", "write", "/etc/motd", "x", cache=cache
    )
    assert image_root.returncode == 1, "the cached rootfs must be read-only to the guest"


@pytest.mark.parametrize(("args", "code"), [(("bogus",), 2), (("read", "/missing"), 1)])
def test_the_guest_exit_code_passes_through(
    files_image: Path, tmp_path: Path, args: tuple[str, ...], code: int
) -> None:
    run = wasmtime_shim("run", str(files_image), "--", *args, cache=tmp_path / "cache")
    assert run.returncode == code, run.stderr


def test_a_trap_exits_134(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "wasm" / "wat" / "trap.wat"
    out = tmp_path / "trap.tar"
    cache = tmp_path / "cache"
    assert wasmtime_shim("build", str(src), "-o", str(out), cache=cache).returncode == 0
    run = wasmtime_shim("run", str(out), cache=cache)
    assert run.returncode == 134 and "wasm trap" in run.stderr, run.stderr


def test_a_corrupt_layer_is_refused_naming_it(files_image: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tar"
    with tarfile.open(files_image) as src, tarfile.open(corrupt, "w") as dst:
        largest = max((m for m in src.getmembers() if m.isfile()), key=lambda m: m.size)
        for member in src.getmembers():
            f = src.extractfile(member) if member.isfile() else None
            data = f.read() if f is not None else None
            if member.name == largest.name and data is not None:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            dst.addfile(member, None if data is None else io.BytesIO(data))
    layer_digest = "sha256:" + largest.name.rsplit("/", 1)[1]
    run = wasmtime_shim("run", str(corrupt), cache=tmp_path / "cache")
    assert run.returncode == 1
    assert (
        "layer 0" in run.stderr and layer_digest in run.stderr and "digest mismatch" in run.stderr
    )
    assert not any((tmp_path / "cache" / "wasmtime-shim" / "rootfs").glob("*/*"))


def test_bad_volume_is_refused(files_image: Path, tmp_path: Path) -> None:
    run = wasmtime_shim("run", "-v", "relative:/x", str(files_image), cache=tmp_path / "cache")
    assert run.returncode == 1 and "not a directory" in run.stderr
