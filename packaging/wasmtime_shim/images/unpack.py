"""Unpacking an image into a rootfs directory, without containerd, refusing anything hostile.

Layers are applied in order: plain, gzip or zstd tars (by media type, or by magic number when
the media type says nothing), with OCI whiteouts (``.wh.NAME`` deletes NAME of the layers below;
``.wh..wh..opq`` hides everything the layers below put in that directory), hard links and
symlinks. Each layer blob is hashed in a first pass and must match its descriptor before a byte
of it is applied; the uncompressed stream must also match the config's ``rootfs.diff_ids``.

Safety, for images from anywhere:
- an entry whose name is absolute or contains ``..`` is refused;
- an entry whose parent path crosses a symlink is refused (a layer that plants ``x -> /etc``
  and then writes ``x/passwd`` would otherwise write outside); files are created with
  ``O_NOFOLLOW | O_EXCL`` after the old entry is removed, so nothing is written through a link;
- a hard link must name a file already inside the rootfs; a relative symlink whose target
  climbs above the root is refused (absolute symlink targets are fine: the runtime resolves
  them inside the rootfs, see runtimes/wasmtime/entry.py);
- devices and FIFOs are skipped, setuid/setgid/sticky bits dropped, owners not applied.
Everything goes into a staging directory next to the target that is renamed into place only
when the whole image applied, so a refused image leaves neither a partial rootfs nor a file
outside it.

Wasm-layer images (runwasi's layout, CNCF wasm OCI artifacts) have no filesystem layers:
their program's layer (chosen as the shim chooses it, ``shim/oci/wasmlayers.py``) is written
as one file and becomes the entrypoint. As in runwasi, the path of the image's Entrypoint does
not locate the program: the file is ``/<its file name>`` (else ``/<layer title>``, else
``/app.wasm``), and the entrypoint is rewritten to that path (a ``#func`` suffix is kept).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shim.errors import FailedPrecondition, InvalidArgument
from shim.oci import wasmlayers
from shim.oci.mediatypes import WASM_CONFIG_MEDIA_TYPES
from wasmtime_shim.images.read import CHUNK, Descriptor, ImageSource, ResolvedImage

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, slots=True)
class UnpackedImage:
    """What ``unpack_image`` produced: the rootfs and the runtime defaults of the image."""

    rootfs: Path
    manifest_digest: str
    artifact: bool  # a wasm-layer image (its program written as one file) or a rootfs image
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    labels: dict[str, str] = field(default_factory=dict)


def unpack_image(image: Path, dest: Path, *, ref: str | None = None) -> UnpackedImage:
    """Unpack the image at ``image`` (layout dir or tar, or docker archive) into ``dest``.

    ``dest`` must not exist, or be an empty directory. Raises InvalidArgument / NotFound for a
    bad source, FailedPrecondition (naming the layer and entry) for a corrupt or hostile one.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidArgument(f"unpack target {dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.unpack-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(mode=0o755)
    try:
        with ImageSource(image) as source:
            resolved = source.resolve(ref)
            result = _apply_image(source, resolved, staging)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(result, rootfs=dest)


def _apply_image(source: ImageSource, image: ResolvedImage, root: Path) -> UnpackedImage:
    runtime = image.config.get("config") or {}
    if not isinstance(runtime, dict):
        raise FailedPrecondition(f"config of {image.manifest_digest}: 'config' is not an object")
    layers = [{"mediaType": d.media_type, "annotations": d.annotations} for d in image.layers]
    artifact = image.config_media_type in WASM_CONFIG_MEDIA_TYPES or (
        wasmlayers.is_wasm_config(image.config) and bool(wasmlayers.wasm_layer_indexes(layers))
    )
    entrypoint = _strings(runtime.get("Entrypoint"))
    if artifact:
        arg0 = entrypoint[0] if entrypoint else None
        n = wasmlayers.pick(layers, arg0, f"wasm image {image.manifest_digest}")
        layer = image.layers[n]
        path, _, func = (arg0 or "").partition("#")
        name = _program_file_name(layer, posixpath.basename(path))
        source.verify_blob(layer, f"layer {n}")
        _copy_blob(source, layer, root / name)
        program = "/" + name + (f"#{func}" if func else "")
        entrypoint = (program, *entrypoint[1:])
    else:
        diff_ids = (image.config.get("rootfs") or {}).get("diff_ids") or []
        for n, layer in enumerate(image.layers):
            what = f"layer {n}"
            source.verify_blob(layer, what, source.layer_name(layer))
            expected = str(diff_ids[n]) if n < len(diff_ids) else None
            with source.open(source.layer_name(layer)) as f:
                apply_layer(
                    f,
                    root,
                    what=f"{what} ({layer.digest})",
                    media_type=layer.media_type,
                    diff_id=expected,
                )
    labels = runtime.get("Labels") or {}
    return UnpackedImage(
        rootfs=root,
        manifest_digest=image.manifest_digest,
        artifact=artifact,
        entrypoint=entrypoint,
        cmd=_strings(runtime.get("Cmd")),
        env=_strings(runtime.get("Env")),
        working_dir=str(runtime.get("WorkingDir") or "/"),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def apply_layer(
    blob: IO[bytes],
    root: Path,
    *,
    what: str = "layer",
    media_type: str = "",
    diff_id: str | None = None,
) -> None:
    """Apply one layer tar (compressed or not) on top of ``root``. See the module docstring."""
    stream = _HashingReader(_decompressed(blob, media_type, what))
    applier = _LayerApplier(root, what)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                applier.apply(tar, member)
        while stream.read(CHUNK):  # the tar's trailing padding counts for the diff_id
            pass
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FailedPrecondition(f"{what}: not a valid tar stream: {e}") from e
    applier.finish()
    if diff_id is not None and diff_id != "sha256:" + stream.digest.hexdigest():
        raise FailedPrecondition(
            f"{what}: uncompressed content does not match the config's diff_id {diff_id}"
        )


class _LayerApplier:
    """Applies the members of one layer; remembers what this layer wrote (for opaque dirs)."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = str(root)
        self.what = what
        self.written: set[tuple[str, ...]] = set()
        self.dirs: list[tuple[str, int, float]] = []

    def refuse(self, name: str, why: str) -> FailedPrecondition:
        return FailedPrecondition(f"{self.what}: refusing entry {name!r}: {why}")

    def parts(self, name: str) -> tuple[str, ...]:
        if name.startswith("/"):
            raise self.refuse(name, "absolute path")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self.refuse(name, "'..' would climb out of the rootfs")
        return parts

    def host(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.root, *parts)

    def parent_dir(self, name: str, parts: tuple[str, ...], *, create: bool) -> None:
        """Make sure every parent of ``parts`` is a real directory (never a symlink)."""
        for depth in range(1, len(parts)):
            path = self.host(parts[:depth])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise self.refuse(name, f"{'/'.join(parts[:depth])} does not exist") from None
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self.refuse(name, f"its parent {'/'.join(parts[:depth])} is a symlink")
            if not stat.S_ISDIR(st.st_mode):
                raise self.refuse(name, f"its parent {'/'.join(parts[:depth])} is not a dir")

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = self.parts(member.name)
        if not parts:
            return  # the root directory itself
        self.parent_dir(member.name, parts, create=True)
        base = parts[-1]
        if base == OPAQUE_MARKER:
            self.clear_lower(parts[:-1])
            return
        if base.startswith(WHITEOUT_PREFIX):
            target = (*parts[:-1], base[len(WHITEOUT_PREFIX) :])
            if target not in self.written:
                _remove(self.host(target))
            return
        path = self.host(parts)
        mode = member.mode & 0o777
        if member.isdir():
            if not os.path.isdir(path) or os.path.islink(path):
                _remove(path)
                os.mkdir(path, 0o755)
            self.dirs.append((path, mode, float(member.mtime)))
        elif member.isreg():
            _remove(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                src = tar.extractfile(member)
                if src is not None:
                    shutil.copyfileobj(src, out, CHUNK)
                os.fchmod(out.fileno(), mode)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        elif member.issym():
            target = member.linkname
            if not target.startswith("/"):
                landed = posixpath.normpath(posixpath.join("/".join(parts[:-1]), target))
                if landed == ".." or landed.startswith("../"):
                    raise self.refuse(member.name, f"symlink to {target!r} points outside")
            _remove(path)
            os.symlink(target, path)
        elif member.islnk():
            link_parts = self.parts(member.linkname)
            if not link_parts:
                raise self.refuse(member.name, "hard link to the root directory")
            self.parent_dir(member.name, link_parts, create=False)
            source = self.host(link_parts)
            try:
                st = os.lstat(source)
            except FileNotFoundError:
                raise self.refuse(
                    member.name, f"hard link to missing {member.linkname!r}"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise self.refuse(member.name, "hard link to a directory")
            if source != path:
                _remove(path)
                os.link(source, path, follow_symlinks=False)
        else:
            return  # devices and FIFOs: not for a wasm guest, and not safe to create
        self.written.add(parts)

    def clear_lower(self, parts: tuple[str, ...]) -> None:
        """Opaque dir: delete what the layers below put in it, keep what this layer wrote."""
        path = self.host(parts)
        if not os.path.isdir(path) or os.path.islink(path):
            return
        for name in os.listdir(path):
            child = (*parts, name)
            if child not in self.written and not any(
                w[: len(child)] == child for w in self.written
            ):
                _remove(self.host(child))
            elif os.path.isdir(self.host(child)) and not os.path.islink(self.host(child)):
                self.clear_lower(child)

    def finish(self) -> None:
        """Directory modes and mtimes last, deepest first (children changed their mtimes)."""
        unprivileged = os.geteuid() != 0
        for path, mode, mtime in sorted(self.dirs, key=lambda d: d[0].count("/"), reverse=True):
            os.chmod(path, mode | (0o700 if unprivileged else 0))
            os.utime(path, (mtime, mtime))


class _HashingReader:
    """A read-only stream that hashes what passes through (for the diff_id check)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.digest.update(data)
        return data


def _decompressed(blob: IO[bytes], media_type: str, what: str) -> IO[bytes]:
    head = blob.read(4)
    blob.seek(0)
    if media_type.endswith("+zstd") or head == ZSTD_MAGIC:
        try:
            import zstandard
        except ImportError as e:
            raise FailedPrecondition(
                f"{what} is zstd-compressed and the 'zstandard' Python package is not installed"
            ) from e
        return zstandard.ZstdDecompressor().stream_reader(blob)  # type: ignore[no-any-return]
    if media_type.endswith("+gzip") or head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=blob, mode="rb")  # type: ignore[return-value]
    return blob


def _copy_blob(source: ImageSource, layer: Descriptor, dest: Path) -> None:
    with source.open(source.layer_name(layer)) as f, dest.open("xb") as out:
        shutil.copyfileobj(f, out, CHUNK)
    dest.chmod(0o644)


def _program_file_name(layer: Descriptor, entry_name: str) -> str:
    """The program's file name: the entrypoint's, else the layer's title, else app.wasm."""
    title = wasmlayers.title({"annotations": layer.annotations})
    name = entry_name or posixpath.basename(title or "app.wasm")
    if not name or name in (".", "..") or "\0" in name:
        raise FailedPrecondition(f"wasm layer {layer.digest}: unusable file name {name!r}")
    return name


def _remove(path: str) -> None:
    """Remove whatever is at ``path`` (a dir tree, a file or a link, never following it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FailedPrecondition(f"image config value {value!r} is not a list of strings")
    return tuple(value)
