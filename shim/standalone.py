"""Running an image without containerd: unpack (cached by digest), then the shim's engine path.

``run_image`` is what ``wasmtime-shim run`` does. The image is unpacked once per manifest
digest under the cache directory (``$XDG_CACHE_HOME/wasmtime-shim`` or
``~/.cache/wasmtime-shim``: ``rootfs/<hex>`` plus ``compiled/`` for wasmtime's compiled
artifacts), then run with exactly the calls the shim makes (runtimes/base.py): ``resolve()``
in this process, ``prepare()`` and ``run()`` in a forked child, so a trap, a ``proc_exit`` or a
crash of the engine cannot take the CLI down, and the child's exit status is passed through
(death by signal n gives 128+n, as in the shim).

What the guest sees: args = the image's Entrypoint + Cmd (``ARGS`` given on the command line
replace Cmd, as ``docker run IMAGE ARGS`` does), env = the image's Env then ``--env`` entries
(nothing of the caller's environment), cwd = WorkingDir; the rootfs preopened READ-ONLY at
``/`` (it is a shared cache), then each ``-v host:guest[:ro]`` volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtimes.base import Preopen, RunConfig
from shim.errors import FailedPrecondition, InvalidArgument, ShimError, from_status
from shim.oci.layout import ImageSource
from shim.oci.unpack import UnpackedImage, unpack_image

CACHE_NAME = "wasmtime-shim"


@dataclass(frozen=True, slots=True)
class Volume:
    """``-v host:guest[:ro|rw]``: a host directory preopened in the guest."""

    host: str
    guest: str
    readonly: bool

    @staticmethod
    def parse(spec: str) -> Volume:
        parts = spec.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
            raise InvalidArgument(f"volume {spec!r} is not HOST:GUEST[:ro|rw]")
        host, guest = parts
        if not guest.startswith("/"):
            raise InvalidArgument(f"volume {spec!r}: the guest path must be absolute")
        if not os.path.isdir(host):
            raise InvalidArgument(f"volume {spec!r}: {host} is not a directory")
        return Volume(os.path.abspath(host), guest, mode == "ro")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / CACHE_NAME


def unpack_cached(
    image: Path, *, ref: str | None = None, cache: Path | None = None
) -> UnpackedImage:
    """The image's rootfs from the cache, unpacking it on first use (keyed by manifest digest).

    The digest is read from the layout (cheap: index and manifest only); a cache entry is only
    ever created complete (unpack_image renames a finished staging dir into place).
    """
    cache = cache or cache_root()
    with ImageSource(image) as source:
        digest = source.resolve(ref).manifest_digest
    key = digest.removeprefix("sha256:")
    rootfs = cache / "rootfs" / key
    meta = cache / "rootfs" / f"{key}.json"
    if rootfs.is_dir() and meta.is_file():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            return _from_json(json.loads(meta.read_text()), rootfs)
    if rootfs.exists():
        import shutil

        shutil.rmtree(rootfs)
    unpacked = unpack_image(image, rootfs, ref=ref)
    tmp = meta.with_name(f".{meta.name}.{os.getpid()}")
    tmp.write_text(json.dumps(_to_json(unpacked)))
    tmp.replace(meta)
    return unpacked


def run_image(
    image: Path,
    *,
    args: Sequence[str] = (),
    env: Sequence[str] = (),
    volumes: Sequence[Volume] = (),
    ref: str | None = None,
    cache: Path | None = None,
) -> int:
    """Run the image's wasm program; return its exit status. Raises ShimError for a bad image
    or a program that cannot start (invalid wasm, missing export: the message says which)."""
    cache = cache or cache_root()
    unpacked = unpack_cached(image, ref=ref, cache=cache)
    argv = (*unpacked.entrypoint, *(args or unpacked.cmd))
    if not argv:
        raise FailedPrecondition(f"image {image} has no Entrypoint or Cmd and no args were given")
    for item in env:
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"--env {item!r} is not NAME=value")
    preopens = (
        Preopen(str(unpacked.rootfs), "/", readonly=True),
        *(Preopen(v.host, v.guest, v.readonly) for v in volumes),
    )
    cfg = RunConfig(
        container_id="standalone-" + hashlib.sha256(str(image).encode()).hexdigest()[:12],
        rootfs=str(unpacked.rootfs),
        args=argv,
        env=(*unpacked.env, *env),
        cwd=unpacked.working_dir,
        preopens=preopens,
        cache_dir=str(cache / "compiled"),
    )
    return _run_forked(cfg)


def _run_forked(cfg: RunConfig) -> int:
    from runtimes.wasmtime import WasmtimeRuntime

    runtime = WasmtimeRuntime()
    entry = runtime.resolve(cfg, _path_env(cfg.env))
    sys.stdout.flush()
    sys.stderr.flush()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the container process: never returns
        code = 1
        try:
            os.close(err_r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            host_cwd = os.path.join(cfg.rootfs, cfg.cwd.lstrip("/"))
            with contextlib.suppress(OSError):
                os.chdir(host_cwd)
            try:
                prepared = runtime.prepare(cfg, entry)
            except ShimError as e:
                os.write(err_w, json.dumps([int(e.code), e.message]).encode())
                os._exit(1)
            os.close(err_w)
            code = runtime.run(prepared)
        except BaseException as e:  # report, never unwind into the CLI's code
            with contextlib.suppress(Exception):
                os.write(2, f"wasmtime-shim run: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as r:
        report = r.read()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except KeyboardInterrupt:  # ^C went to the child too; wait for it to go
            continue
    if report:
        code, message = json.loads(report)
        raise from_status(code, message)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _path_env(env: Sequence[str]) -> str | None:
    path = None
    for item in env:
        if item.startswith("PATH="):
            path = item[len("PATH=") :]
    return path


def _to_json(image: UnpackedImage) -> dict[str, object]:
    return {
        "manifest_digest": image.manifest_digest,
        "artifact": image.artifact,
        "entrypoint": list(image.entrypoint),
        "cmd": list(image.cmd),
        "env": list(image.env),
        "working_dir": image.working_dir,
        "labels": image.labels,
    }


def _from_json(data: dict[str, object], rootfs: Path) -> UnpackedImage:
    def strings(key: str) -> tuple[str, ...]:
        value = data[key]
        if not isinstance(value, list):
            raise TypeError(key)
        return tuple(str(v) for v in value)

    labels = data.get("labels")
    return UnpackedImage(
        rootfs=rootfs,
        manifest_digest=str(data["manifest_digest"]),
        artifact=bool(data["artifact"]),
        entrypoint=strings("entrypoint"),
        cmd=strings("cmd"),
        env=strings("env"),
        working_dir=str(data["working_dir"]),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )
