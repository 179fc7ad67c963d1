"""`wasmtime-shim`: build and run wasm images, install the shim on a node, check a node.

Each area lives in its own module that adds its subcommands through `register(subparsers)`;
this file only assembles them and turns expected errors (shim.errors) into one clear line on
stderr and exit status 1, so every subcommand fails the same way.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shim import __version__
from shim.errors import ShimError

# The modules that provide subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "wasmtime_shim.images.commands",  # build, unpack, inspect: wasm OCI images
    "wasmtime_shim.run",  # run an image without containerd
    "wasmtime_shim.node.commands",  # install, uninstall, doctor, manifests: the node side
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wasmtime-shim",
        description="Build and run WebAssembly OCI images, and install the "
        "containerd-shim-wasmtime-v1 runtime on a node.",
    )
    p.add_argument("--version", action="version", version=f"wasmtime-shim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ShimError as e:
        print(f"wasmtime-shim {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
