"""Build the static native test programs and pack them as OCI images for the CRI plugin.

Why static: the images hold nothing but the one binary (no libc, no shell), so they stay tiny
and deterministic, and they run under any OCI runtime. Debian's gcc with glibc's ``libc.a``
(package libc6-dev) links these programs statically; clang is used when gcc is missing.

Why our own image layout here rather than ``wasmtime_shim.images.build.build_image``: that
one writes *wasm* images (platform wasip1/wasm, the wasm variant annotation). The CRI plugin
needs the sandbox image, and a native sidecar's image, for the host platform (linux/amd64
here), or it refuses them as "not the host platform". The layer itself comes from the shared,
deterministic ``build_layer``.

Image references live on the ``localhost`` registry on purpose: should containerd ever try to
pull one (an image not imported yet), the attempt goes to loopback and fails at once.

Run ``python -m tests.pause.build`` to build both programs and print their paths.
"""

from __future__ import annotations

import functools
import io
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from shim.oci.mediatypes import MEDIA_TYPE_INDEX
from tests.wasm.build import BuildError, compile_cached
from wasmtime_shim.images.build import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_MANIFEST,
    Blob,
    OciImage,
    build_layer,
)

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = Path(__file__).resolve().parent
CACHE_DIR = REPO / ".cache" / "native"
COMPILERS = ("gcc", "clang-14", "clang")
CFLAGS: tuple[str, ...] = ("-static", "-O2", "-Wall", "-Wextra", "-Werror", "-s")

# Where the programs go in their images, and their images' references.
PAUSE_PATH = "/pause"
SIDECAR_PATH = "/sidecar"
PAUSE_IMAGE = "localhost/cri-testbed/pause:1"
SIDECAR_IMAGE = "localhost/cri-testbed/sidecar:1"

# Go's names for the machines we may run on (what OCI platforms use).
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def programs() -> list[str]:
    """Names of the native programs (``pause`` for ``pause.c``), sorted."""
    return sorted(path.stem for path in SOURCE_DIR.glob("*.c"))


@functools.cache
def compiler() -> str | None:
    """The first C compiler found on PATH, or None."""
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@functools.cache
def toolchain_problem() -> str | None:
    """Why static programs cannot be built here (a skip/fail reason), or None when they can.

    Tries a real static link of a two-line program: a compiler without a static libc is the
    usual failure, and only linking finds it.
    """
    cc = compiler()
    if cc is None:
        return "no C compiler (Debian packages gcc and libc6-dev)"
    with tempfile.TemporaryDirectory(prefix="static-probe-") as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text("#include <unistd.h>\nint main(void) { return getpid() < 0; }\n")
        result = subprocess.run(
            [cc, *CFLAGS, str(source), "-o", str(Path(tmp) / "probe")],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        return f"{cc} cannot link static programs (Debian package libc6-dev): {result.stderr}"
    return None


def build_native(name: str) -> Path:
    """Build ``tests/pause/<name>.c`` statically (or reuse the cached build); return its path.

    Raises FileNotFoundError for an unknown program and BuildError when compiling fails.
    Outputs are cached under ``<repo>/.cache/native/`` by a hash of the source, flags and
    compiler, and written atomically, so concurrent test runs can share them.
    """
    source = SOURCE_DIR / f"{name}.c"
    if not source.is_file():
        raise FileNotFoundError(f"no native test program {name!r}; have {programs()}")
    problem = toolchain_problem()
    cc = compiler()
    if problem or cc is None:
        raise BuildError(f"cannot build {name}: {problem}")

    return compile_cached(cc, CFLAGS, source, CACHE_DIR, name, "", 0o755)


def host_platform() -> dict[str, str]:
    """The OCI platform of this machine, e.g. ``{"os": "linux", "architecture": "amd64"}``."""
    machine = platform.machine()
    return {"os": "linux", "architecture": _GO_ARCH.get(machine, machine)}


def native_image(binary: Path, *, ref: str, path_in_image: str) -> OciImage:
    """A one-layer host-platform image holding ``binary`` at ``path_in_image`` as Entrypoint.

    Deterministic: the same binary and names always give the same digests.
    """
    layer_tar = build_layer({path_in_image: binary})
    layer = Blob(MEDIA_TYPE_LAYER, layer_tar)
    diff_id = layer.digest  # uncompressed layer: its digest is its diff id
    config = Blob(
        MEDIA_TYPE_CONFIG,
        _json(
            {
                **host_platform(),
                "config": {"Entrypoint": [path_in_image], "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ),
    )
    manifest = Blob(
        MEDIA_TYPE_MANIFEST,
        _json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            manifest.descriptor(
                platform=host_platform(),
                annotations={ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF_NAME: tag},
            )
        ],
    }
    archive = _layout_tar(_json(index), [layer, config, manifest])
    return OciImage(ref, manifest.digest, config.digest, layer.digest, diff_id, archive)


def pause_image() -> OciImage:
    """The pod sandbox image (set as the CRI plugin's ``sandbox_image``)."""
    return native_image(build_native("pause"), ref=PAUSE_IMAGE, path_in_image=PAUSE_PATH)


def sidecar_image() -> OciImage:
    """The native sidecar image; its Entrypoint is ``/sidecar`` (see sidecar.c for options)."""
    return native_image(build_native("sidecar"), ref=SIDECAR_IMAGE, path_in_image=SIDECAR_PATH)


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _layout_tar(index_json: bytes, blobs: list[Blob]) -> bytes:
    """An OCI image layout as a tar with fixed metadata, blobs sorted by digest."""
    members: list[tuple[str, bytes | None]] = [
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", index_json),
        ("blobs", None),
        ("blobs/sha256", None),
    ]
    unique = {blob.digest: blob for blob in blobs}
    members += [
        (f"blobs/sha256/{d.removeprefix('sha256:')}", unique[d].data) for d in sorted(unique)
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main(argv: list[str]) -> int:
    for name in argv or programs():
        print(build_native(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
