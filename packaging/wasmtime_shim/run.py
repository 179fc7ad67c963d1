"""`wasmtime-shim run IMAGE`: run an image's wasm program on this machine, without containerd.

``run_image`` unpacks the image once per manifest digest under the cache directory
(``$XDG_CACHE_HOME/wasmtime-shim`` or ``~/.cache/wasmtime-shim``: ``rootfs/<hex>`` plus
``compiled/``, a compile cache of the shim's own kind), then forks a child that runs the very
code of a shim's container process (``shim.proc.child.run_child``: signal defaults, load,
prepare, ready report, run), so a trap, a ``proc_exit`` or a crash of the engine cannot take
the CLI down. The child's exit status is passed through (death by signal n gives 128+n, as in
the shim); a program that cannot start (invalid wasm, missing export) is reported on the
child's ready pipe and raised here as a ShimError. SIGINT and SIGTERM are passed on to the
child (it runs in a session of its own, as a container process does).

What the shim does besides, and this command does not: a cgroup, the pod's namespaces, the
spec's uid/gid, the linear-memory cap from the cgroup's limit, a warm runtime compiling once
per node. The engine path itself is the same, so a module that runs here runs the same under
containerd.

What the guest sees: args = the image's Entrypoint + Cmd (``ARGS`` given on the command line
replace Cmd, as ``docker run IMAGE ARGS`` does), env = the image's Env then ``--env`` entries
(nothing of the caller's environment), cwd = WorkingDir; the rootfs preopened READ-ONLY at
``/`` (it is a shared cache), then each ``-v host:guest[:ro]`` volume.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtimes.base import DEFAULT_CACHE_LIMIT, CacheSettings, Preopen, RunConfig
from shim.errors import FailedPrecondition, InvalidArgument, from_status
from wasmtime_shim.images.read import ImageSource
from wasmtime_shim.images.unpack import UnpackedImage, unpack_image

CACHE_NAME = "wasmtime-shim"
DESCRIPTION = """\
`wasmtime-shim run IMAGE`: run a wasm image on this machine, no containerd needed.

The image (an archive or layout dir from `wasmtime-shim build`, `ctr image export` or
`docker save`) is unpacked once into a cache keyed by its manifest digest, and its program is
run with the same engine code the shim uses. The guest's exit status is this command's.
The guest gets the image's Entrypoint + Cmd (ARGS replace Cmd), the image's Env plus --env,
its WorkingDir, the rootfs read-only at /, and each --volume.
"""


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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "run",
        help="run a wasm image without containerd",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("image", type=Path, help="image archive (tar) or OCI layout directory")
    r.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST:GUEST[:ro]",
        help="preopen a host directory in the guest (repeatable)",
    )
    r.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="add to the image's env (repeatable)",
    )
    r.add_argument("--ref", default=None, help="which image, when the layout holds several")
    r.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="unpack cache (default $XDG_CACHE_HOME/wasmtime-shim)",
    )
    r.add_argument("args", nargs=argparse.REMAINDER, help="-- ARGS: replace the image's Cmd")
    r.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    volumes = [Volume.parse(spec) for spec in args.volume]
    return run_image(
        args.image, args=rest, env=args.env, volumes=volumes, ref=args.ref, cache=args.cache_dir
    )


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
        cache=CacheSettings(str(cache / "compiled"), DEFAULT_CACHE_LIMIT),
    )
    return _run_forked(cfg)


def _run_forked(cfg: RunConfig) -> int:
    from runtimes.wasmtime import WasmtimeRuntime
    from shim.oci.spec import getenv
    from shim.proc.child import ProcessSetup, decode_report, run_child
    from shim.proc.process import exit_code_from_wait_status

    runtime = WasmtimeRuntime()
    entry = runtime.resolve(cfg, getenv(cfg.env, "PATH"))
    runtime.warm()
    host_cwd = os.path.join(cfg.rootfs, cfg.cwd.lstrip("/"))
    setup = ProcessSetup(host_cwd=host_cwd if os.path.isdir(host_cwd) else cfg.rootfs)
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the container process: never returns
        os.close(ready_r)
        run_child(runtime, cfg, entry, setup, (0, 1, 2), ready_w)
    os.close(ready_w)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    with os.fdopen(ready_r, "rb") as r:
        report = r.read()
    _, status = os.waitpid(pid, 0)
    failure = decode_report(report) if report else None
    if failure is not None:
        code, message = failure
        raise from_status(int(code), message)
    return exit_code_from_wait_status(status)


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
