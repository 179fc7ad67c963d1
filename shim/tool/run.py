"""`wasmtime-shim run IMAGE`: run a wasm image on this machine, no containerd needed.

The image (an archive or layout dir from `wasmtime-shim build`, `ctr image export` or
`docker save`) is unpacked once into a cache keyed by its manifest digest, and its program is
run with the same engine code the shim uses. The guest's exit status is this command's.
See shim/standalone.py for exactly what the guest sees.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shim.standalone import Volume, run_image


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "run",
        help="run a wasm image without containerd",
        description=__doc__,
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
