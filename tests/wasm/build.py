"""Build the C test programs in ``tests/wasm/c`` into WASI preview 1 modules.

Uses Debian's toolchain: clang-14 with ``--target=wasm32-wasi``, wasm-ld (lld), wasi-libc's
headers in ``/usr/include/wasm32-wasi`` and libraries in ``/usr/lib/wasm32-wasi``, and the
wasm32 compiler builtins from ``libclang-rt-14-dev-wasm32`` (clang links them itself).
``-nostdlibinc`` plus an explicit ``-isystem`` keeps the host's ``/usr/include`` out: Debian's
clang would otherwise search it after the wasi headers and silently pick up glibc headers.

Outputs are cached under ``<repo>/.cache/wasm/`` by a hash of the source, the flags and the
compiler's version, and written atomically, so concurrent test runs can share the cache.

Run ``python -m tests.wasm.build [name...]`` to build and print the paths.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = Path(__file__).resolve().parent / "c"
CACHE_DIR = REPO / ".cache" / "wasm"

WASI_INCLUDE = Path("/usr/include/wasm32-wasi")
WASI_LIB = Path("/usr/lib/wasm32-wasi")
CLANG_CANDIDATES = ("clang-14", "clang")

CFLAGS: tuple[str, ...] = (
    "--target=wasm32-wasi",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-nostdlibinc",
    "-isystem",
    str(WASI_INCLUDE),
    f"-L{WASI_LIB}",
    "-fuse-ld=lld",
    "-Wl,--strip-all",
)


class BuildError(RuntimeError):
    """A test program did not compile; the message carries the compiler's output."""


def programs() -> list[str]:
    """Names of the C test programs (``hello`` for ``c/hello.c``), sorted."""
    return sorted(path.stem for path in SOURCE_DIR.glob("*.c"))


@functools.cache
def clang() -> str | None:
    """The clang able to target wasm32-wasi, or None."""
    for name in CLANG_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def toolchain_problem() -> str | None:
    """Why C programs cannot be built here (for a skip/fail reason), or None when they can."""
    if clang() is None:
        return "clang is not installed (Debian packages clang, lld)"
    if shutil.which("wasm-ld") is None and shutil.which("wasm-ld-14") is None:
        return "wasm-ld is not installed (Debian package lld)"
    if not (WASI_LIB / "libc.a").exists() or not (WASI_INCLUDE / "stdio.h").exists():
        return "wasi-libc is not installed (Debian package wasi-libc)"
    return None


@functools.cache
def _compiler_identity(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True)
    return out.stdout


def build_c(name: str) -> Path:
    """Build ``tests/wasm/c/<name>.c`` (or reuse the cached build) and return the module path.

    Raises FileNotFoundError for an unknown program and BuildError when compiling fails.
    """
    source = SOURCE_DIR / f"{name}.c"
    if not source.is_file():
        raise FileNotFoundError(f"no test program {name!r}; have {programs()}")
    problem = toolchain_problem()
    compiler = clang()
    if problem or compiler is None:
        raise BuildError(f"cannot build {name}: {problem}")

    return compile_cached(compiler, CFLAGS, source, CACHE_DIR, name, ".wasm", 0o644)


def compile_cached(
    compiler: str,
    flags: tuple[str, ...],
    source: Path,
    cache_dir: Path,
    name: str,
    suffix: str,
    mode: int,
) -> Path:
    """Compile ``source`` into ``cache_dir``, keyed by a hash of the source, the flags and the
    compiler's identity, written atomically so that concurrent test runs can share it."""
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update("\0".join(flags).encode())
    key.update(_compiler_identity(compiler).encode())
    output = cache_dir / f"{name}-{key.hexdigest()[:16]}{suffix}"
    if output.exists():
        return output
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=suffix, dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = subprocess.run(
            [compiler, *flags, str(source), "-o", str(tmp)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(
                f"building {source} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        tmp.chmod(mode)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def main(argv: list[str]) -> int:
    for name in argv or programs():
        print(build_c(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
