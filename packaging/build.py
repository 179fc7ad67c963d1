#!/usr/bin/env python3
"""Build the self-contained shim binary with PyInstaller, cached by a hash of its inputs.

    .venv/bin/python packaging/build.py [--mode onedir|onefile] [--force]
    .venv/bin/python packaging/build.py --glibc    # the glibc the bundle needs, measured

`--glibc` reads the version references (ELF .gnu.version_r) of every ELF file in the built
bundle and prints the highest GLIBC_x.y any of them needs, then each file's: the oldest glibc
a node may have (the README states the number this measures).

prints the path of the built binary (onedir: `<dist>/containerd-shim-wasmtime-v1/
containerd-shim-wasmtime-v1`, beside its `_internal/`; onefile: the single file). Beside the
binary lies `wasmtime-shim`, a symlink to it: the bundle's entry point (packaging/entry.py)
runs the tool when started under that name, so the bundle installs itself with no venv. The build
lands in `.cache/pyinstaller/<key>/<mode>/`, where the key hashes every input that changes the
output (the sources of shim/ and runtimes/, this directory: the spec, the entry point and the
tool's package wasmtime_shim/; pyproject.toml; the versions of Python, PyInstaller and
wasmtime), so a test session builds at most once and a source edit rebuilds. Concurrent
builders serialize on a lock file; the result is renamed into place only when complete, so a
half-built tree is never used.

This is a plain script, not a package: a `packaging` package would shadow the PyPI library
of that name, which PyInstaller and setuptools import.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "packaging" / "shim.spec"
CACHE = REPO / ".cache" / "pyinstaller"
NAME = "containerd-shim-wasmtime-v1"
TOOL_NAME = "wasmtime-shim"  # the same binary under the tool's name (packaging/entry.py)
MODES = ("onedir", "onefile")
SOURCE_DIRS = ("shim", "runtimes", "packaging")  # packaging/ holds wasmtime_shim/
SOURCE_SUFFIXES = (".py", ".spec", ".pyi")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def cache_key() -> str:
    """A hash of everything the frozen binary is made from."""
    h = hashlib.sha256()
    files = [REPO / "pyproject.toml"]
    for top in SOURCE_DIRS:
        files += sorted(
            p
            for p in (REPO / top).rglob("*")
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts
        )
    for path in files:
        h.update(str(path.relative_to(REPO)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    for dist in ("pyinstaller", "wasmtime", "protobuf", "tomlkit"):
        h.update(f"{dist}={_version(dist)}\0".encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def binary_path(dist_dir: Path, mode: str) -> Path:
    return dist_dir / NAME / NAME if mode == "onedir" else dist_dir / NAME


def build(mode: str = "onedir", *, force: bool = False, quiet: bool = True) -> Path:
    """Build (or reuse) the binary for `mode`; return its path."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    target = CACHE / cache_key() / mode
    done = binary_path(target / "dist", mode)
    if done.exists() and not force:
        return done
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{mode}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and not force:  # another builder finished while we waited
            return done
        work = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=target.parent))
        try:
            cmd = [
                sys.executable,
                "-m",
                "PyInstaller",
                "--noconfirm",
                "--clean",
                "--log-level",
                "WARN",
                "--distpath",
                str(work / "dist"),
                "--workpath",
                str(work / "build"),
                str(SPEC),
            ]
            env = {**os.environ, "WASMTIME_SHIM_MODE": mode, "PYTHONDONTWRITEBYTECODE": "1"}
            result = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=quiet, text=True, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"PyInstaller failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                )
            shutil.rmtree(work / "build", ignore_errors=True)
            (binary_path(work / "dist", mode).parent / TOOL_NAME).symlink_to(NAME)
            if target.exists():
                shutil.rmtree(target)
            work.rename(target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return done


SHT_GNU_VERNEED = 0x6FFFFFFE


def glibc_needs(path: Path) -> tuple[int, ...] | None:
    """The highest GLIBC_x.y version `path` (a 64-bit little-endian ELF) references, None
    when it references none (or is not such an ELF). The dynamic loader refuses to load a
    file whose references the node's glibc does not define, so this is a hard floor."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    best: tuple[int, ...] | None = None
    for _name, kind, _flags, _addr, offset, _size, link, info, _align, _entsize in sections:
        if kind != SHT_GNU_VERNEED:
            continue
        strtab = sections[link][4]
        need = offset
        for _ in range(info):  # sh_info: the number of Verneed entries
            _ver, count, _file, aux, nxt = struct.unpack_from("<HHIII", data, need)
            entry = need + aux
            for _ in range(count):
                _hash, _vflags, _other, name, anext = struct.unpack_from("<IHHII", data, entry)
                end = data.index(b"\0", strtab + name)
                label = data[strtab + name : end].decode()
                if label.startswith("GLIBC_") and label[6:].replace(".", "").isdigit():
                    version = tuple(int(x) for x in label[6:].split("."))
                    best = version if best is None or version > best else best
                entry += anext
            need += nxt
    return best


def glibc_floor(bundle: Path) -> tuple[tuple[int, ...], dict[Path, tuple[int, ...]]]:
    """(the highest glibc version any ELF file under `bundle` needs, each file's need)."""
    needs = {}
    for path in sorted(bundle.rglob("*")):
        if path.is_file() and not path.is_symlink():
            version = glibc_needs(path)
            if version is not None:
                needs[path] = version
    return max(needs.values(), default=()), needs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the self-contained shim binary.")
    p.add_argument("--mode", choices=MODES, default="onedir")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--verbose", action="store_true", help="show PyInstaller's output")
    p.add_argument("--glibc", action="store_true", help="print the glibc the bundle needs")
    args = p.parse_args(argv)
    binary = build(args.mode, force=args.force, quiet=not args.verbose)
    if not args.glibc:
        print(binary)
        return 0
    floor, needs = glibc_floor(binary.parent)
    print("glibc >= " + ".".join(map(str, floor)))
    for path, version in sorted(needs.items(), key=lambda item: (item[1], item[0])):
        print(f"  {'.'.join(map(str, version)):<6} {path.relative_to(binary.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
