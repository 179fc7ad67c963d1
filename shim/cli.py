"""The command-line contract with containerd: `-v`, `-info`, `start`, `delete`, and `warm`.

containerd runs `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID [-debug] start`
(and `... -bundle DIR delete`), with Go-style flags (`-flag value`, `-flag=value`, one or two
dashes); newer releases add flags and write a bootstrap message on stdin. Unknown flags are
therefore ignored, and stdin is never read but by `-info` (containerd 2.x: the runtime's
options, echoed back with the shim's features; shim/info.py): what it holds cannot break
us. `warm` runs this containerd's warm runtime (shim/warm/boot.py); `start` launches it,
people rarely do.
`spawner` replaces a pod daemon's spawner that died (shim/proc/spawner.py); only the daemon
runs it, with the socket it serves as descriptor 3.

No argparse: it imports `re`, `gettext`, `shutil` and more, and this module runs on every
container's start and removal. The parser is the dozen lines below.
"""

from __future__ import annotations

import os
import sys

from shim import RUNTIME_NAME, __version__

VALUE_FLAGS = frozenset(
    {"namespace", "address", "publish-binary", "id", "bundle", "socket", "title-room", "lock-fd"}
)
BOOL_FLAGS = frozenset({"debug", "v", "version", "info"})
ACTIONS = ("start", "delete", "warm", "spawner")
USAGE = (
    "containerd-shim-wasmtime-v1 is run by containerd (start, delete); "
    "see `wasmtime-shim --help` for the user-facing command\n"
)


def parse(argv: list[str]) -> tuple[dict[str, str], set[str], str | None]:
    """(value flags, boolean flags set, action) from Go-style arguments."""
    values: dict[str, str] = {}
    bools: set[str] = set()
    action = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("-") and len(arg) > 1:
            name, sep, value = arg.lstrip("-").partition("=")
            if name in VALUE_FLAGS:
                if not sep and i < len(argv):
                    value = argv[i]
                    i += 1
                values[name] = value
            elif name in BOOL_FLAGS and value.lower() not in ("false", "0"):
                bools.add(name)
            # any other flag: ignored (newer containerd releases add some)
        elif action is None and arg in ACTIONS:
            action = arg
    return values, bools, action


def _done(out: bytes) -> int:
    """Write `start`'s or `delete`'s answer and end the process at once: the interpreter's
    own teardown (module and object finalisation) costs milliseconds containerd waits for,
    and these commands hold nothing that needs it."""
    try:
        while out:
            out = out[os.write(1, out) :]
    finally:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    values, bools, action = parse(sys.argv[1:] if argv is None else argv)
    if bools & {"v", "version"}:
        sys.stdout.write(
            f"containerd-shim-wasmtime-v1:\n  Version:  {__version__}\n  Runtime:  {RUNTIME_NAME}\n"
        )
        return 0
    if "info" in bools:
        from shim import info

        try:
            return _done(info.runtime_info(info.read_options()))
        except Exception as e:  # bad options on stdin: containerd shows stderr
            sys.stderr.write(f"containerd-shim-wasmtime-v1 -info: {e}\n")
            return 1
    from shim.options import ShimOptions

    opts = ShimOptions(
        namespace=values.get("namespace") or os.environ.get("NAMESPACE", "default"),
        address=values.get("address", ""),
        publish_binary=values.get("publish-binary", ""),
        id=values.get("id", ""),
        bundle=values.get("bundle", ""),
        debug="debug" in bools,
    )
    if action == "start":
        from shim import manager

        try:
            address = manager.start(opts)
        except Exception as e:  # containerd shows our combined output in its error
            sys.stdout.write(f"containerd-shim-wasmtime-v1 start: {e}")
            return 1
        return _done(address.encode())
    if action == "delete":
        from shim import manager

        try:
            out = manager.delete(opts)
        except Exception as e:
            sys.stderr.write(f"containerd-shim-wasmtime-v1 delete: {e}\n")
            return 1
        return _done(out)
    if action == "spawner":
        from shim.proc import spawner

        return spawner.main(opts)
    if action == "warm":
        from shim.warm import boot

        lock_fd = values.get("lock-fd", "")
        return boot.main(opts.address, int(lock_fd) if lock_fd.isdigit() else None)
    sys.stdout.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
