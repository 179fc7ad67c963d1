"""The frozen binary, installed by `wasmtime-shim install`, runs a wasm container through a
private containerd that finds it on its PATH, with no venv anywhere on that PATH.

The PyInstaller build runs once per source hash (packaging/build.py caches it under .cache/),
so repeated sessions reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomlkit

from tests.containerd import CONTAINERD, CTR, RUNTIME, PrivateContainerd
from tests.e2e.helpers import c_program, make_image
from tests.prereq import require
from wasmtime_shim.node import config as cfg

REPO = Path(__file__).resolve().parents[2]
SHIM = "containerd-shim-wasmtime-v1"
REF = "docker.io/library/packaged-hello:latest"


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasmtime_shim.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_frozen_binary_carries_wasmtime(frozen: Path) -> None:
    native = frozen.parent / "_internal" / "wasmtime" / "linux-x86_64" / "_libwasmtime.so"
    assert native.is_file(), sorted(p.name for p in (frozen.parent / "_internal").iterdir())
    # no Python of ours in its environment: it must not need one
    out = subprocess.run([str(frozen), "-v"], env={}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "io.containerd.wasmtime.v1" in out.stdout, out


def test_installed_binary_runs_a_container(frozen: Path, tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root to run containerd")
    require(CONTAINERD.exists() and CTR.exists(), "containerd and ctr are missing")
    node = tmp_path / "node"
    config = node / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    original = "version = 2\n# a comment to keep\n[grpc]\n  address = '/x.sock'\n"
    config.write_text(original)

    args = ("--root", str(node), "--bin-dir", "/opt/wasm/bin", "--lib-dir", "/opt/wasm/lib")
    out = tool("install", *args, "--binary", str(frozen))
    assert out.returncode == 0, out.stderr
    doc = tomlkit.parse(config.read_text())
    assert cfg.registered_runtimes(doc) == {"wasmtime": "io.containerd.wasmtime.v1"}
    installed = node / "opt/wasm/bin" / SHIM
    assert installed.is_symlink()
    # the symlink names the node path; here the node's / is `node`, so point at it directly
    real = node / "opt/wasm/lib" / SHIM
    assert os.readlink(installed) == f"/opt/wasm/lib/{SHIM}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / SHIM).symlink_to(real)

    image = make_image(tmp_path, {"/hello.wasm": c_program("hello")}, ref=REF)
    with PrivateContainerd(shim=bin_dir / SHIM) as containerd:
        path = _env_path(containerd)
        assert ".venv" not in path and sys.prefix not in path, path
        image.import_into(containerd, "packaging")
        run = containerd.ctr(
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            REF,
            "pk-1",
            "/hello.wasm",
            "7",
            namespace="packaging",
            check=False,
            timeout=120,
        )
        assert run.returncode == 7, run.stdout + run.stderr + containerd.log_tail()
        assert "hello from wasm" in run.stdout
        assert not containerd.wait_for_no_leaks("packaging")

    out = tool("uninstall", *args)
    assert out.returncode == 0, out.stderr
    assert config.read_text() == original
    assert not installed.exists() and not real.exists()


def _env_path(containerd: PrivateContainerd) -> str:
    """containerd's own PATH, read from /proc: what it searches for the shim."""
    pid = containerd._proc.pid if containerd._proc else 0
    for var in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if var.startswith(b"PATH="):
            return var[5:].decode()
    raise AssertionError("containerd has no PATH")


def test_bench_prints_medians(frozen: Path) -> None:
    require(os.geteuid() == 0, "the bench's sockets live in /run/containerd")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "start_delete.py"),
            "--runs",
            "3",
            "--modes",
            "onedir",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"venv", "onedir"}
    assert float(rows["venv"][2]) == 1.0 and float(rows["onedir"][1]) > 0
    assert float(rows["onedir"][3]) > 0  # delete
    # The import lists: `delete` loads the bundle record's module and nothing heavy.
    delete_imports = lines[lines.index(next(ln for ln in lines if ln.startswith("`delete`"))) :]
    assert any(ln.strip().endswith("shim.bundle") for ln in delete_imports)
    assert not any(ln.strip().endswith(("asyncio", "json", "google.protobuf")) for ln in lines)
