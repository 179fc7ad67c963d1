"""The command-line contract with containerd: `-v`, `start`, `delete`, and the daemon.

containerd runs `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID [-debug] start`
(and `... -bundle DIR delete`), with Go-style single-dash flags; newer releases add flags and
write a bootstrap message on stdin. Unknown flags are therefore ignored, and stdin is never
read: what it holds cannot break us. Imports stay light until the action is known, because
`start` runs on every container start.
"""

from __future__ import annotations

import argparse
import os
import sys

from shim import RUNTIME_NAME, __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="containerd-shim-wasmtime-v1",
        description="containerd runtime v2 shim that runs WebAssembly with wasmtime "
        f"(runtime {RUNTIME_NAME}). containerd runs this binary; you rarely need to.",
        allow_abbrev=False,
    )
    for name in ("namespace", "address", "publish-binary", "id", "bundle", "socket"):
        p.add_argument(f"-{name}", f"--{name}", default="", dest=name.replace("-", "_"))
    p.add_argument("-debug", "--debug", action="store_true")
    p.add_argument("-v", "--version", action="store_true", dest="version")
    p.add_argument("-info", "--info", action="store_true")
    p.add_argument("action", nargs="?", choices=["start", "delete"], default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args, _unknown = _parser().parse_known_args(argv)
    if args.version:
        print(
            f"containerd-shim-wasmtime-v1:\n  Version:  {__version__}\n  Runtime:  {RUNTIME_NAME}"
        )
        return 0
    if args.info:
        sys.stdout.write("-info is not supported by this shim\n")
        return 1

    from shim.manager import ShimOptions

    opts = ShimOptions(
        namespace=args.namespace or os.environ.get("NAMESPACE", "default"),
        address=args.address,
        publish_binary=args.publish_binary,
        id=args.id,
        bundle=args.bundle,
        debug=args.debug,
    )
    if args.action == "start":
        from shim import manager

        try:
            address = manager.start(opts)
        except Exception as e:  # containerd shows our combined output in its error
            sys.stdout.write(f"containerd-shim-wasmtime-v1 start: {e}")
            return 1
        sys.stdout.write(address)
        return 0
    if args.action == "delete":
        from shim import manager

        try:
            out = manager.delete(opts)
        except Exception as e:
            sys.stderr.write(f"containerd-shim-wasmtime-v1 delete: {e}\n")
            return 1
        sys.stdout.buffer.write(out)
        return 0

    sys.stdout.write(
        "containerd-shim-wasmtime-v1 is run by containerd (start, delete); "
        "see `wasmtime-shim --help` for the user-facing command\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
