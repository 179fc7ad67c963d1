"""`wasmtime-shim build | unpack | inspect`: wasm OCI images from the command line.

`build` turns a `.wasm` (core module or component) or `.wat` into an image archive that
`ctr image import` and `nerdctl load` accept, in one of three formats:

- `runwasi` (default): runwasi's layout, so the image runs on runwasi's shims too: an
  ordinary image config (platform `wasip1/wasm`, `wasip2/wasm` for a component; the
  entrypoint set; no diff_ids) and one layer that is the wasm binary
  (`application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`); no filesystem, so
  `--file` is refused. CRI and nerdctl run it on every containerd, `ctr run` from 1.6.25 /
  1.7.7 on (1.6.20's ctr refuses it).
- `rootfs`: an ordinary one-layer image, the module at `/app.wasm` (or `--path`), the
  entrypoint set, the same platform and the annotation `module.wasm.image/variant=compat`.
  Extra files and dirs go in with `--file`. Runs on every containerd (for 2.x's CRI, import
  it with `ctr image import --local`: 2.x's default import unpacks the host's platform only).
- `artifact`: a CNCF wasm OCI artifact (config `application/vnd.wasm.config.v0+json`, layer
  `application/wasm`); no filesystem, so `--file` is refused. CRI runs it; `ctr run` and
  nerdctl refuse it on every containerd.

The same inputs always give the same bytes (and so the same digests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shim.errors import InvalidArgument
from wasmtime_shim.images.artifact import (
    build_artifact,
    build_runwasi_image,
    platform_os,
    wasm_kind,
)
from wasmtime_shim.images.build import (
    CTR_IMPORT_FLAGS,
    Directory,
    FileSource,
    ImageConfig,
    build_image,
)
from wasmtime_shim.images.read import ImageSource
from wasmtime_shim.images.unpack import unpack_image

DEFAULT_PATH = "/app.wasm"
FORMATS = ("runwasi", "rootfs", "artifact")
DEFAULT_FORMAT = "runwasi"
# ctr 1.6 unpacks at import and, before 1.6.25, refuses an image with no diff_ids there
# ("mismatched image rootfs and manifest layers"); without unpacking, the import itself
# works, and 1.7+'s ctr run and CRI make the (empty) snapshot themselves.
CTR_IMPORT_FLAGS_ARTIFACT = (*CTR_IMPORT_FLAGS, "--no-unpack")
CTR_IMPORT_FLAGS_RUNWASI = CTR_IMPORT_FLAGS_ARTIFACT


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "build",
        help="build a wasm OCI image from a .wasm or .wat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("module", type=Path, help="the program: .wasm (module or component) or .wat")
    b.add_argument("-o", "--output", type=Path, help="write the image archive (tar) here")
    b.add_argument("--layout-dir", type=Path, help="also (or only) write an OCI layout dir")
    b.add_argument(
        "--name",
        default=None,
        help="image reference (default: docker.io/library/<module name>:latest)",
    )
    b.add_argument(
        "--format",
        choices=FORMATS,
        default=DEFAULT_FORMAT,
        help=f"image layout (default {DEFAULT_FORMAT}; see above)",
    )
    b.add_argument(
        "--path",
        default=DEFAULT_PATH,
        help=f"the program's path: the entrypoint, and its layer's title (default {DEFAULT_PATH})",
    )
    b.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="SRC:DEST",
        help="add a host file or directory at DEST in the image (repeatable)",
    )
    b.add_argument(
        "--arg",
        action="append",
        default=[],
        help="an argument after the module (the image's Cmd; repeatable)",
    )
    b.add_argument("--env", action="append", default=[], metavar="K=V", help="image env")
    b.add_argument("--label", action="append", default=[], metavar="K=V", help="image label")
    b.add_argument("--workdir", default="/", help="the image's working directory")
    b.set_defaults(func=build_command)

    u = sub.add_parser(
        "unpack",
        help="unpack an image (OCI layout dir/tar, docker archive) into a rootfs directory",
    )
    u.add_argument("image", type=Path)
    u.add_argument("rootfs", type=Path, help="target directory (must not exist, or be empty)")
    u.add_argument("--ref", default=None, help="which image, when the layout holds several")
    u.set_defaults(func=unpack_command)

    i = sub.add_parser("inspect", help="print an image's manifest digest, config and layers")
    i.add_argument("image", type=Path)
    i.add_argument("--ref", default=None)
    i.set_defaults(func=inspect_command)


def build_command(args: argparse.Namespace) -> int:
    if args.output is None and args.layout_dir is None:
        raise InvalidArgument("say where to write the image: -o IMAGE.tar and/or --layout-dir")
    wasm = load_module(args.module)
    kind = wasm_kind(wasm)
    ref = args.name or f"docker.io/library/{_default_name(args.module)}:latest"
    env = tuple(args.env)
    labels = dict(_pair(item, "--label") for item in args.label)
    if args.format != "rootfs" and args.file:
        raise InvalidArgument(
            f"--file needs --format rootfs: {args.format} images have no filesystem"
        )
    # The artifact's config keeps the same runtime object (our extension), so that CRI, which
    # reads any config as an OCI image config, finds the entrypoint there too.
    config = ImageConfig(
        entrypoint=(args.path,),
        cmd=tuple(args.arg),
        env=env,
        working_dir=args.workdir,
        labels=tuple(labels.items()),
    )
    if args.format == "artifact":
        image = build_artifact(wasm, ref=ref, config=config, title=Path(args.path).name)
        import_flags = CTR_IMPORT_FLAGS_ARTIFACT
    elif args.format == "runwasi":
        image = build_runwasi_image(wasm, ref=ref, config=config, title=Path(args.path).name)
        import_flags = CTR_IMPORT_FLAGS_RUNWASI
    else:
        files: dict[str, FileSource] = {args.path: wasm}
        for item in args.file:
            src, _, dest = item.rpartition(":")
            if not src or not dest:
                raise InvalidArgument(f"--file {item!r} is not SRC:DEST")
            files.update(_host_files(Path(src), dest, files))
        image = build_image(files, ref=ref, config=config, os_name=platform_os(kind))
        import_flags = CTR_IMPORT_FLAGS
    if args.output is not None:
        image.write(args.output)
    if args.layout_dir is not None:
        image.write_dir(args.layout_dir)
    print(f"{ref} {args.format} {kind.value} manifest {image.manifest_digest}")
    if args.output is not None:
        print(f"import with: ctr image import {' '.join(import_flags)} {args.output}")
    return 0


def unpack_command(args: argparse.Namespace) -> int:
    result = unpack_image(args.image, args.rootfs, ref=args.ref)
    kind = "wasm artifact" if result.artifact else "image"
    print(f"unpacked {kind} {result.manifest_digest} into {result.rootfs}")
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    with ImageSource(args.image) as source:
        image = source.resolve(args.ref)
    out = {
        "manifest": image.manifest_digest,
        "configMediaType": image.config_media_type,
        "config": image.config,
        "layers": [
            {"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in image.layers
        ],
    }
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def load_module(path: Path) -> bytes:
    """The module's binary; `.wat` text (or any file that is not binary wasm) is translated."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror}") from e
    if raw[:4] == b"\0asm":
        return raw
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(raw.decode("utf-8")))
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as e:
        raise InvalidArgument(f"{path} is neither binary wasm nor valid WAT: {e}") from e


def _host_files(src: Path, dest: str, taken: dict[str, FileSource]) -> dict[str, FileSource]:
    """A host file, or every regular file under a host dir (sorted; symlinks refused).

    A directory with nothing in it, `src` itself included, becomes an empty directory of the
    image (some programs need an empty /tmp); directories that hold files come with them.
    """
    if src.is_symlink():
        raise InvalidArgument(f"--file {src}: symlinks are not copied; name the target")
    if src.is_file():
        return {dest: src}
    if not src.is_dir():
        raise InvalidArgument(f"--file {src}: no such file or directory")
    out: dict[str, FileSource] = {}
    empty: list[str] = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        here = Path(root).relative_to(src).as_posix()
        image_dir = dest.rstrip("/") if here == "." else f"{dest.rstrip('/')}/{here}"
        if not dirs and not names:
            empty.append(image_dir)
        for name in sorted(names):
            host = Path(root, name)
            if host.is_symlink() or not host.is_file():
                raise InvalidArgument(f"--file {src}: {host} is not a regular file")
            out[f"{image_dir}/{name}"] = host
        for name in dirs:
            if Path(root, name).is_symlink():
                raise InvalidArgument(f"--file {src}: {Path(root, name)} is a symlink")
    for image_dir in empty:
        out[image_dir or "/"] = Directory()
    clash = out.keys() & taken.keys()
    if clash:
        raise InvalidArgument(f"--file {src}: {sorted(clash)[0]} is given twice")
    return out


def _pair(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise InvalidArgument(f"{flag} {item!r} is not NAME=value")
    return name, value


def _default_name(module: Path) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in module.stem.lower())
    return stem.strip("-._") or "wasm"
