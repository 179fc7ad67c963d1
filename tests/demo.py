"""``make demo``: run a wasm program through the shim with a private containerd and ``ctr``.

Starts a PrivateContainerd, builds ``tests/wasm/c/hello.c``, packs it into an image with
wasmtime_shim/images/build.py, imports it, runs it with ``ctr run --rm --runtime
io.containerd.wasmtime.v1`` and prints the guest's output and exit code; then stops containerd
and reports leaks.
Exits non-zero if the run fails, the guest's exit code is not the one asked for, or anything
was left behind. Run it from the repository root: ``.venv/bin/python -m tests.demo``.
"""

from __future__ import annotations

import os
import sys

from tests.containerd import RUNTIME, PrivateContainerd, sweep_stale
from tests.wasm.build import build_c
from wasmtime_shim.images.build import ImageConfig, build_image

REF = "docker.io/library/hello-wasm:latest"
NAMESPACE = "demo"
EXIT_CODE = 3


def main() -> int:
    module = build_c("hello")
    # The rootfs layout: ctr 1.6.20 (Debian 12's) refuses runwasi's (README "Images").
    image = build_image(
        {"/hello.wasm": module}, ref=REF, config=ImageConfig(entrypoint=("/hello.wasm",))
    )
    print(f"built {module.name}; image {REF} manifest {image.manifest_digest}")
    failed = False
    sweep_stale()
    containerd = PrivateContainerd().start()
    try:
        print(f"containerd running at {containerd.address} (log: {containerd.log_path})")
        archive = image.write(containerd.base / "hello-wasm.tar")
        print(containerd.import_image(archive, namespace=NAMESPACE).strip())
        container = f"demo-{os.getpid()}"
        cmd = ("run", "--rm", "--runtime", RUNTIME, REF, container, "/hello.wasm", "3")
        print("$ ctr " + " ".join(cmd))
        run = containerd.ctr(*cmd, namespace=NAMESPACE, check=False, timeout=120)
        print("--- guest stdout ---")
        print(run.stdout, end="")
        if run.stderr:
            print("--- ctr stderr ---")
            print(run.stderr, end="")
        print(f"--- exit code {run.returncode} (expected {EXIT_CODE}) ---")
        failed = run.returncode != EXIT_CODE or "hello from wasm" not in run.stdout
        if failed:
            print(containerd.log_tail(), file=sys.stderr)
        leftover = containerd.wait_for_no_leaks(NAMESPACE)
    finally:
        cleaned = containerd.stop()
    if cleaned or leftover:
        print("LEAKS: " + "; ".join(str(leak) for leak in cleaned or leftover))
        return 1
    print("no leaks")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
