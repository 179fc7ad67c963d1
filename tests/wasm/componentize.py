"""Build WASI preview 2 components from Python sources with componentize-py (from PyPI, a
dev dependency), against the wasi:http WIT that wasmtime's `wasmtime-wasi-http` crate ships
in its `wit/` folder.

The crate is fetched with cargo (`cargo info NAME@VERSION` downloads the `.crate` into
cargo's registry cache without its dependencies); its `wit/` is extracted into
`.cache/wit/`. Components are cached under `.cache/components/` by a hash of the app's
sources, the world and the tools' versions, and written atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "py"
WIT_CRATE = "wasmtime-wasi-http"
WIT_CRATE_VERSION = "50.0.1"  # the wasmtime release wasmtime-py 50 binds
WIT_CACHE = REPO / ".cache" / "wit"
COMPONENT_CACHE = REPO / ".cache" / "components"


class BuildError(RuntimeError):
    """A tool failed; the message carries its output."""


def cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    candidate = home / "bin" / "cargo"
    return str(candidate) if candidate.exists() else None


def componentize_py() -> str | None:
    beside = Path(sys.executable).parent / "componentize-py"
    return str(beside) if beside.exists() else shutil.which("componentize-py")


def toolchain_problem() -> str | None:
    if componentize_py() is None:
        return "componentize-py is missing (pip install -e '.[dev]')"
    if cargo() is None:
        return "cargo is missing (rustup), needed to fetch the wasi:http WIT from crates.io"
    return None


def wit_dir() -> Path:
    """The crate's `wit/` folder (its world includes wasi:http/proxy), fetched once."""
    out = WIT_CACHE / f"{WIT_CRATE}-{WIT_CRATE_VERSION}"
    if (out / "deps" / "http.wit").exists():
        return out
    tool = cargo()
    if tool is None:
        raise BuildError("cargo is missing")
    got = subprocess.run(
        [tool, "info", f"{WIT_CRATE}@{WIT_CRATE_VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if got.returncode != 0:
        raise BuildError(f"cargo info {WIT_CRATE}@{WIT_CRATE_VERSION}:\n{got.stderr}")
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    crates = sorted(home.glob(f"registry/cache/*/{WIT_CRATE}-{WIT_CRATE_VERSION}.crate"))
    if not crates:
        raise BuildError(f"cargo fetched no {WIT_CRATE}-{WIT_CRATE_VERSION}.crate under {home}")
    prefix = f"{WIT_CRATE}-{WIT_CRATE_VERSION}/wit/"
    WIT_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wit-", dir=WIT_CACHE))
    try:
        with tarfile.open(crates[0], "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(prefix) and ".." not in member.name:
                    target = tmp / member.name[len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
        if not (tmp / "deps" / "http.wit").exists():
            raise BuildError(f"{crates[0]} has no wit/deps/http.wit")
        tmp.rename(out)
    except OSError:
        if not out.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout


def _app_wit(app_wit: Path) -> Path:
    """The crate's WIT packages (its `deps/`) with the app's own world in place of the
    crate's (componentize-py 0.25 panics when given two `-w` worlds to merge)."""
    crate = wit_dir()
    digest = hashlib.sha256(app_wit.read_bytes()).hexdigest()[:16]
    out = WIT_CACHE / f"app-{digest}"
    if (out / "world.wit").exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=".app-", dir=WIT_CACHE))
    try:
        shutil.copytree(crate / "deps", tmp / "deps")
        shutil.copyfile(app_wit, tmp / "world.wit")
        tmp.rename(out)
    except OSError:
        if not out.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build(app: str, worlds: tuple[str, ...]) -> Path:
    """The component of `tests/wasm/py/<app>/app.py` for `worlds` (built or cached). An app
    with a `wit/world.wit` of its own is built against it and the crate's packages."""
    tool = componentize_py()
    if tool is None:
        raise BuildError("componentize-py is missing")
    source = APPS / app
    key = hashlib.sha256()
    for path in sorted([*source.rglob("*.py"), *source.rglob("*.wit")]):
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    key.update("\0".join(worlds).encode() + _version(tool).encode() + WIT_CRATE_VERSION.encode())
    out = COMPONENT_CACHE / f"{app}-{key.hexdigest()[:16]}.wasm"
    if out.exists():
        return out
    app_wit = source / "wit" / "world.wit"
    wit = _app_wit(app_wit) if app_wit.exists() else wit_dir()
    COMPONENT_CACHE.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{app}-", suffix=".wasm", dir=COMPONENT_CACHE)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        args = [tool, "-d", str(wit)]
        for world in worlds:
            args += ["-w", world]
        args += ["componentize", "app", "-p", str(source), "-o", str(tmp)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        tmp.chmod(0o644)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1], tuple(sys.argv[2:])))
