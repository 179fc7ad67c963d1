#!/usr/bin/env python3
"""Build the images a cluster rollout needs, as OCI archives (`ctr image import` takes them).

    .venv/bin/python packaging/node_images.py installer [-o dist/images] [--name REF]
    .venv/bin/python packaging/node_images.py examples [-o dist/images]

(`make installer-image` and `make example-images` run these.) Each prints what it wrote, the
image's reference and its manifest digest: `REF@sha256:...` pins exactly this image once it
is pushed unchanged (skopeo copy oci-archive:FILE docker://REGISTRY/NAME:TAG).

The installer image (linux/amd64) is the onedir bundle from packaging/build.py at
/opt/containerd-shim-wasmtime/, started as `wasmtime-shim` (its entrypoint), plus what the
bundle needs from outside itself: the dynamic loader and every shared library that `ldd`
resolves for its ELF files outside the bundle (glibc's libc, libm, ...; copied from this
machine, so the image carries the glibc the bundle was built against), and nsenter with its
libraries, which `install --restart` uses to reach the host's systemd. Its default command
installs onto the host root mounted at /host and then sleeps (a DaemonSet container); the
DaemonSets of `wasmtime-shim manifests` give their own arguments.

The example images are wasm (config-examples/wasm/): `hello` prints a line and exits (the
example Pod), `heartbeat` prints every second until stopped (the example Deployment).

A plain script like build.py, for the same reason (no `packaging` package).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "packaging")]

from shim.errors import FailedPrecondition  # noqa: E402
from wasmtime_shim.images.build import (  # noqa: E402
    Directory,
    FileSource,
    ImageConfig,
    OciImage,
    Symlink,
    build_image,
)
from wasmtime_shim.images.commands import load_module  # noqa: E402
from wasmtime_shim.node import manifests  # noqa: E402

BUNDLE_DIR = "/opt/containerd-shim-wasmtime"
NSENTER = Path("/usr/bin/nsenter")
DEFAULT_OUTPUT = REPO / "dist" / "images"
EXAMPLES = REPO / "config-examples" / "wasm"
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's
# "/lib64/ld-linux-x86-64.so.2 (0x...)".
_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")
INSTALLER_CMD = ("install", "--root", "/host", "--sleep")


def _build_module() -> ModuleType:
    """packaging/build.py, loaded by path (the name `build` is also a PyPI package)."""
    spec = importlib.util.spec_from_file_location("_bundle_build", REPO / "packaging/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def shared_libraries(binaries: list[Path], inside: Path | None = None) -> dict[str, Path]:
    """{path the loader looks for: host file} of every library `ldd` resolves for
    `binaries`, the loader included, leaving out what lies under `inside` (the bundle)."""
    found: dict[str, Path] = {}
    for binary in binaries:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, check=False, timeout=60
        )
        if out.returncode != 0:
            if "not a dynamic executable" in out.stdout + out.stderr:
                continue
            raise FailedPrecondition(f"ldd {binary} failed: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            if "not found" in line:
                raise FailedPrecondition(f"{binary}: a library is missing here: {line.strip()}")
            match = _LDD_LINE.match(line)
            if match is None:
                continue  # linux-vdso.so.1, which the kernel provides
            path = Path(match.group(1))
            if inside is not None and path.resolve().is_relative_to(inside.resolve()):
                continue
            found[str(path)] = path.resolve()
    return found


def installer_image(bundle_binary: Path, ref: str) -> OciImage:
    """The installer image around the onedir bundle whose binary is `bundle_binary`."""
    bundle = bundle_binary.parent
    if not (bundle / "_internal").is_dir():
        raise FailedPrecondition(f"{bundle} is not a onedir bundle (no _internal/)")
    files: dict[str, FileSource] = {}
    elves = []
    for path in sorted(bundle.rglob("*")):
        name = f"{BUNDLE_DIR}/{path.relative_to(bundle).as_posix()}"
        if path.is_symlink():
            files[name] = Symlink(os.readlink(path))
        elif path.is_file():
            files[name] = path
            if is_elf(path):
                elves.append(path)
    elves.append(NSENTER)
    files[str(NSENTER)] = NSENTER
    for name, host in shared_libraries(elves, inside=bundle).items():
        files.setdefault(name, host)
    files["/tmp"] = Directory(0o1777)
    files["/host"] = Directory()
    config = ImageConfig(
        entrypoint=(f"{BUNDLE_DIR}/wasmtime-shim",),
        cmd=INSTALLER_CMD,
        env=(f"PATH={BUNDLE_DIR}:/usr/sbin:/usr/bin:/sbin:/bin",),
        labels=(("org.opencontainers.image.title", "containerd-shim-wasmtime installer"),),
    )
    return build_image(
        files, ref=ref, config=config, os_name="linux", architecture="amd64", compresslevel=6
    )


def example_images() -> dict[str, OciImage]:
    """{file name: image} of the examples' images, named as the manifests reference them.

    The rootfs layout, not `wasmtime-shim build`'s default (runwasi's): the README's "Using
    it" runs them with `ctr run`, and Debian's containerd 1.6.20 ctr refuses runwasi's layout
    ("mismatched image rootfs and manifest layers"; README "Images")."""
    out = {}
    for stem, ref in (
        ("hello", manifests.EXAMPLE_IMAGE),
        ("heartbeat", manifests.DEPLOYMENT_IMAGE),
    ):
        wasm = load_module(EXAMPLES / f"{stem}.wat")
        config = ImageConfig(entrypoint=("/app.wasm",))
        out[f"{stem}.tar"] = build_image({"/app.wasm": wasm}, ref=ref, config=config)
    return out


def repository(ref: str) -> str:
    """`ref` without its tag (a `:` after the last `/`; one before it is a registry port)."""
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("installer", "examples"))
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="a directory")
    p.add_argument("--name", default=manifests.DEFAULT_INSTALLER_IMAGE, help="installer's ref")
    args = p.parse_args(argv)
    if args.what == "installer":
        binary = _build_module().build("onedir")
        images = {"installer.tar": installer_image(binary, manifests.check_image(args.name))}
    else:
        images = example_images()
    for name, image in images.items():
        path = image.write(args.output / name)
        print(f"{path}: {image.ref}")
        print(f"  pinned: {repository(image.ref)}@{image.manifest_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
