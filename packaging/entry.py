"""The frozen binary's entry point: one binary, two commands, chosen by the name it runs as.

containerd runs `containerd-shim-wasmtime-v1`; a node installer (the DaemonSet) runs
`wasmtime-shim install ...` from the same bundle, so the tool needs no Python on the node
either. Anything not named `wasmtime-shim*` is the shim (`start` forks the daemon from
itself, so no second name is needed). Imports stay inside the branches: `start` runs on every
container start and must not pay for the tool's modules (the package wasmtime_shim, which the
shim itself never imports).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if os.path.basename(sys.argv[0]).startswith("wasmtime-shim"):
        from wasmtime_shim.main import main as tool_main

        return tool_main()
    from shim.cli import main as shim_main

    return shim_main()


if __name__ == "__main__":
    sys.exit(main())
