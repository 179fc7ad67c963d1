"""Deterministic OCI image archives for wasm workloads.

Builds an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``) holding one
image with ONE layer, and returns it as a tar archive that ``ctr image import`` understands.
``build_image`` makes the ordinary ("rootfs") kind; ``assemble`` (the manifest, index and
archive around one config and one layer) is shared with the wasm artifacts of ``artifact.py``.
Everything that could vary between runs is pinned (mtimes, owners, entry order, gzip header),
so the same inputs always give the same digests: tests can compare digests, and a re-import of
an unchanged image is a no-op for containerd's content store.

What the image says about itself:

* config ``architecture: "wasm"``, ``os: "wasip1"``, plus ``Entrypoint``/``Cmd``/``Env``/
  ``WorkingDir`` and ``rootfs.diff_ids`` (the digest of the *uncompressed* layer tar);
* the manifest (and its index entry) carries ``module.wasm.image/variant=compat``, the
  annotation wasm-aware runtimes (crun, runwasi) use to recognise wasm images;
* the index entry carries ``io.containerd.image.name`` = the full reference, which is what
  containerd 1.6's importer uses as the image name (``org.opencontainers.image.ref.name`` =
  just the tag, as containerd's own exporter writes it; used by importers that take a
  ``--base-name``).

Importing with containerd 1.6's ``ctr`` (verified against Debian's 1.6.20)::

    ctr -n NS image import --all-platforms image.tar

Why a platform flag: the index entry carries ``platform: {os: wasip1, architecture: wasm}``,
and without a flag ctr 1.6 filters the manifest out as "not the host platform" and the import
fails with ``ctr: image might be filtered out``. ``--platform wasip1/wasm`` works as well as
``--all-platforms``. Unpacking and ``ctr run`` then need no platform flag: the image's target
is the manifest itself, and containerd only platform-checks manifests reached *through* an
index.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shim.errors import InvalidArgument
from shim.oci.mediatypes import MEDIA_TYPE_INDEX, WASM_ARCHITECTURE

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_WASM_VARIANT = "module.wasm.image/variant"

WASM_OS = "wasip1"  # core modules (WASI preview 1)
WASM_OS_P2 = "wasip2"  # components (WASI preview 2)

# The flags `ctr image import` needs for these archives; see the module docstring.
CTR_IMPORT_FLAGS: tuple[str, ...] = ("--all-platforms",)

# Every entry of every tar we write carries this mtime; 0 keeps it obviously synthetic.
FIXED_MTIME = 0


@dataclass(frozen=True, slots=True)
class Symlink:
    """A symbolic link in a layer, pointing at `target` (kept verbatim, as tar stores it)."""

    target: str


@dataclass(frozen=True, slots=True)
class Directory:
    """A directory in a layer even when nothing is put in it (say an empty /tmp)."""

    mode: int = 0o755


FileSource = bytes | Path | Symlink | Directory
"""A layer entry: the bytes themselves, a host file to copy (read once), a symlink, or a
directory."""


class Compression(enum.Enum):
    """How the single layer is stored in the archive."""

    NONE = "none"
    GZIP = "gzip"


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The runtime defaults an image carries (the OCI image config's ``config`` object)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = "/"
    labels: tuple[tuple[str, str], ...] = ()  # config.Labels, sorted by name

    def __post_init__(self) -> None:
        labels = self.labels.items() if isinstance(self.labels, Mapping) else self.labels
        object.__setattr__(self, "labels", tuple(sorted((str(k), str(v)) for k, v in labels)))
        if len({name for name, _ in self.labels}) != len(self.labels):
            raise InvalidArgument("image label given twice")
        for name in ("entrypoint", "cmd", "env"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise InvalidArgument(f"image config {name} must be a sequence of strings")
            object.__setattr__(self, name, tuple(value))
        for item in self.env:
            if "=" not in item or item.startswith("="):
                raise InvalidArgument(f"image env entry {item!r} is not NAME=value")
        if not self.working_dir.startswith("/"):
            raise InvalidArgument(f"image working dir {self.working_dir!r} is not absolute")


@dataclass(frozen=True, slots=True)
class Blob:
    """One content-addressed blob of the layout."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        desc: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        desc.update(extra)
        return desc


@dataclass(frozen=True, slots=True)
class OciImage:
    """A built image: its archive bytes and the digests tests and callers compare."""

    ref: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str  # for a wasm artifact: the layer digest (its layer is not compressed)
    archive: bytes = field(repr=False)

    def write(self, dest: Path) -> Path:
        """Write the archive to ``dest`` atomically (tmp file + rename) and return ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(self.archive)
        tmp.replace(dest)
        return dest

    def write_dir(self, dest: Path) -> Path:
        """Write the layout as a directory (``oci-layout``, ``index.json``, ``blobs/``).

        ``dest`` must not exist or be empty: a layout directory holds one image here, and
        merging into someone else's index is a job for ``ctr``/``skopeo``, not for us.
        """
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise InvalidArgument(f"layout directory {dest} exists and is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(self.archive)) as tar:
            tar.extractall(dest, filter="data")  # our own archive: plain files and dirs
        return dest


def build_image(
    files: Mapping[str, FileSource],
    *,
    ref: str,
    config: ImageConfig | None = None,
    compression: Compression = Compression.GZIP,
    annotations: Mapping[str, str] | None = None,
    os_name: str = WASM_OS,
    architecture: str = WASM_ARCHITECTURE,
    compresslevel: int = 9,
) -> OciImage:
    """Build a one-layer wasm image from ``{path in image: content}``.

    ``ref`` is the full reference the image is imported as (for example
    ``docker.io/library/hello-wasm:latest``). ``annotations`` are added to the manifest's (the
    wasm variant annotation is always present in a wasm image). ``os_name`` is the platform
    os: ``wasip1`` for a core module, ``wasip2`` for a component. An ``architecture`` other
    than ``wasm`` (with ``os_name`` ``linux``) makes a native image, such as the node installer
    (packaging/installer_image.py), without the wasm variant annotation. ``compresslevel``
    trades gzip time for size (the digests depend on it). Raises InvalidArgument for a bad
    path or ref.
    """
    check_ref(ref)
    config = config or ImageConfig()
    layer_tar = build_layer(files)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    if compression is Compression.GZIP:
        layer = Blob(MEDIA_TYPE_LAYER_GZIP, _gzip(layer_tar, compresslevel))
    else:
        layer = Blob(MEDIA_TYPE_LAYER, layer_tar)

    config_blob = Blob(
        MEDIA_TYPE_CONFIG, canonical_json(_image_config(config, diff_id, os_name, architecture))
    )
    wasm = architecture == WASM_ARCHITECTURE
    manifest_annotations = {
        **({ANNOTATION_WASM_VARIANT: "compat"} if wasm else {}),
        **(annotations or {}),
    }
    return assemble(
        ref=ref,
        config=config_blob,
        layer=layer,
        diff_id=diff_id,
        os_name=os_name,
        annotations=manifest_annotations,
        architecture=architecture,
    )


def assemble(
    *,
    ref: str,
    config: Blob,
    layer: Blob,
    diff_id: str,
    os_name: str,
    annotations: Mapping[str, str],
    layer_annotations: Mapping[str, str] | None = None,
    architecture: str = WASM_ARCHITECTURE,
) -> OciImage:
    """Manifest + index around one config and one layer, as an archive (both formats)."""
    layer_desc = (
        layer.descriptor(annotations=dict(layer_annotations))
        if layer_annotations
        else (layer.descriptor())
    )
    manifest = Blob(
        MEDIA_TYPE_MANIFEST,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer_desc],
                "annotations": dict(annotations),
            }
        ),
    )
    entry_annotations = {ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF_NAME: _tag_of(ref)}
    if ANNOTATION_WASM_VARIANT in annotations:
        entry_annotations[ANNOTATION_WASM_VARIANT] = annotations[ANNOTATION_WASM_VARIANT]
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            manifest.descriptor(
                platform={"architecture": architecture, "os": os_name},
                annotations=entry_annotations,
            )
        ],
    }
    archive = _layout_tar(canonical_json(index), (layer, config, manifest))
    return OciImage(
        ref=ref,
        manifest_digest=manifest.digest,
        config_digest=config.digest,
        layer_digest=layer.digest,
        diff_id=diff_id,
        archive=archive,
    )


def build_layer(files: Mapping[str, FileSource]) -> bytes:
    """The uncompressed layer tar: sorted entries, every parent directory, fixed metadata.

    Files get mode 0644, or 0755 when given as a host file with any execute bit; directories
    get 0755 (or a ``Directory``'s mode); symlinks 0777; owner 0:0 with empty user/group
    names; mtime FIXED_MTIME.
    """
    entries: dict[PurePosixPath, tuple[bytes | Symlink, int]] = {}
    explicit_dirs: dict[PurePosixPath, int] = {}
    for raw_path, source in files.items():
        path = _image_path(raw_path)
        if path in entries or path in explicit_dirs:
            raise InvalidArgument(f"image path {raw_path!r} is given twice")
        if isinstance(source, Directory):
            explicit_dirs[path] = source.mode
        else:
            entries[path] = _read_source(raw_path, source)

    dirs = {parent for path in entries for parent in path.parents if parent != PurePosixPath(".")}
    dirs |= {p for path in explicit_dirs for p in path.parents if p != PurePosixPath(".")}
    clash = (dirs | explicit_dirs.keys()) & entries.keys()
    if clash:
        raise InvalidArgument(f"image path {sorted(map(str, clash))[0]!r} is a file and a dir")

    members: list[tuple[PurePosixPath, bytes | Symlink | None, int]] = [
        (d, None, explicit_dirs.get(d, 0o755)) for d in dirs | explicit_dirs.keys()
    ]
    members += [(path, data, mode) for path, (data, mode) in entries.items()]
    members.sort(key=lambda member: member[0].parts)
    return _tar((str(path), data, mode) for path, data, mode in members)


def runtime_config(config: ImageConfig) -> dict[str, object]:
    """The OCI image config's ``config`` object (Entrypoint, Cmd, Env, WorkingDir, Labels)."""
    runtime: dict[str, object] = {"WorkingDir": config.working_dir}
    if config.entrypoint:
        runtime["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        runtime["Cmd"] = list(config.cmd)
    if config.env:
        runtime["Env"] = list(config.env)
    if config.labels:
        runtime["Labels"] = dict(config.labels)
    return runtime


def _image_config(
    config: ImageConfig, diff_id: str, os_name: str, architecture: str
) -> dict[str, object]:
    return {
        "architecture": architecture,
        "os": os_name,
        "config": runtime_config(config),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }


def _layout_tar(index_json: bytes, blobs: Sequence[Blob]) -> bytes:
    """The OCI layout as a tar: oci-layout, index.json, then the blobs sorted by digest."""
    members: list[tuple[str, bytes | None, int]] = [
        ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), 0o644),
        ("index.json", index_json, 0o644),
        ("blobs", None, 0o755),
        ("blobs/sha256", None, 0o755),
    ]
    unique = {blob.digest: blob for blob in blobs}
    for digest in sorted(unique):
        hexpart = digest.removeprefix("sha256:")
        members.append((f"blobs/sha256/{hexpart}", unique[digest].data, 0o644))
    return _tar(members)


def _tar(members: Iterable[tuple[str, bytes | Symlink | None, int]]) -> bytes:
    """A tar of (name, data, a Symlink or None for a directory, mode), in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mtime = FIXED_MTIME
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, Symlink):
                info.type = tarfile.SYMTYPE
                info.linkname = data.target
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes, compresslevel: int = 9) -> bytes:
    # mtime=0 and no file name in the header: the compressed bytes depend on the data only.
    return gzip.compress(data, compresslevel=compresslevel, mtime=0)


def canonical_json(value: object) -> bytes:
    """Sorted keys, no spaces: the same value always serialises to the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _image_path(raw: str) -> PurePosixPath:
    """A path inside the image, made relative ("/app/x" -> "app/x"); no "..", not empty."""
    if not raw or "\0" in raw:
        raise InvalidArgument(f"image path {raw!r} is empty or holds a NUL")
    parts = raw.split("/")
    if ".." in parts:
        raise InvalidArgument(f"image path {raw!r} climbs out with '..'")
    normal = posixpath.normpath("/" + raw).lstrip("/")
    if not normal or normal == ".":
        raise InvalidArgument(f"image path {raw!r} names the root, not a file")
    return PurePosixPath(normal)


def _read_source(raw_path: str, source: FileSource) -> tuple[bytes | Symlink, int]:
    if isinstance(source, Symlink):
        if not source.target or "\0" in source.target:
            raise InvalidArgument(f"image symlink {raw_path!r} has no valid target")
        return source, 0o777
    if isinstance(source, bytes | bytearray):
        return bytes(source), 0o644
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
            executable = source.stat().st_mode & 0o111
        except OSError as exc:
            raise InvalidArgument(f"image file {raw_path!r}: cannot read {source}: {exc}") from exc
        return data, 0o755 if executable else 0o644
    raise InvalidArgument(f"image file {raw_path!r}: content must be bytes, a Path or a Symlink")


def check_ref(ref: str) -> None:
    if not ref or any(ch.isspace() for ch in ref) or ref != ref.strip("/:@"):
        raise InvalidArgument(f"image reference {ref!r} is not a valid name")


def _tag_of(ref: str) -> str:
    """The tag part of a reference, "latest" when it has none (digest refs keep the digest)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.split(":", 1)[1]
    if "@" in ref:
        return ref.split("@", 1)[1]
    return "latest"
