"""Reading an image from an OCI image layout (directory or tar) or a docker-archive tar.

The reader's job is to find ONE image and hand out its blobs with their digests checked: the
index (or docker's ``manifest.json``) picks the manifest, the manifest names the config and
the layers, and every blob is verified against its descriptor's digest and size before it is
used. A layer is verified in a first pass over its bytes (``verify_blob``) so that the unpacker
never writes a byte of a layer that turns out to be corrupt.

Picking the manifest: a reference, when given, must match an index entry's
``io.containerd.image.name`` or ``org.opencontainers.image.ref.name`` annotation; otherwise
a layout with exactly one image is unambiguous, and among several the ``wasm`` platform wins
(nested indexes are followed the same way).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shim.errors import FailedPrecondition, InvalidArgument, NotFound
from shim.oci.mediatypes import INDEX_TYPES, MAX_JSON_BLOB, WASM_ARCHITECTURE
from wasmtime_shim.images.build import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_LAYER,
)

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor (the fields we use)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False)

    @staticmethod
    def parse(raw: Any, what: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise FailedPrecondition(f"{what}: descriptor is not an object")
        digest, size = raw.get("digest"), raw.get("size")
        if not isinstance(digest, str) or ":" not in digest:
            raise FailedPrecondition(f"{what}: descriptor has no valid digest")
        if not isinstance(size, int) or size < 0:
            raise FailedPrecondition(f"{what} {digest}: descriptor has no valid size")
        annotations = raw.get("annotations") or {}
        return Descriptor(str(raw.get("mediaType", "")), digest, size, dict(annotations))


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One image of a layout: its manifest digest, config (parsed) and layers, in order."""

    manifest_digest: str
    config_media_type: str
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]


class ImageSource:
    """Blobs by digest, from a layout directory, a layout tar or a docker-archive tar.

    Use as a context manager (a tar stays open while blobs are read).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        if not path.is_file():
            raise NotFound(f"image {path}: no such file or directory")
        try:
            self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by __exit__)
            for info in self._tar.getmembers():
                if info.isfile():
                    self._members[info.name.removeprefix("./")] = info
        except (tarfile.TarError, OSError) as e:
            raise InvalidArgument(f"image {path}: not a tar archive or layout dir: {e}") from e

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()

    def has(self, name: str) -> bool:
        if self._tar is None:
            return (self.path / name).is_file()
        return name in self._members

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A file of the layout by its relative name (``index.json``, ``blobs/sha256/..``)."""
        if ".." in name.split("/") or name.startswith("/"):
            raise FailedPrecondition(f"image {self.path}: refusing path {name!r}")
        if self._tar is None:
            try:
                f: IO[bytes] = (self.path / name).open("rb")
            except OSError as e:
                raise FailedPrecondition(f"image {self.path}: cannot read {name}: {e}") from e
        else:
            info = self._members.get(name)
            extracted = self._tar.extractfile(info) if info is not None else None
            if extracted is None:
                raise FailedPrecondition(f"image {self.path}: {name} is missing")
            f = extracted
        with f:
            yield f

    def read_json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read(MAX_JSON_BLOB + 1)
        return _parse_json(data, f"{self.path}: {name}")

    @staticmethod
    def blob_name(digest: str) -> str:
        algorithm, _, hexpart = digest.partition(":")
        if algorithm != "sha256" or len(hexpart) != 64 or not _is_hex(hexpart):
            raise FailedPrecondition(f"unsupported or malformed digest {digest!r}")
        return f"blobs/sha256/{hexpart}"

    def read_blob(self, desc: Descriptor, what: str) -> bytes:
        """A small blob (manifest, config), digest- and size-checked."""
        if desc.size > MAX_JSON_BLOB:
            raise FailedPrecondition(f"{what} {desc.digest} is too large ({desc.size} bytes)")
        with self.open(self.blob_name(desc.digest)) as f:
            data = f.read(MAX_JSON_BLOB + 1)
        check_digest(hashlib.sha256(data).hexdigest(), len(data), desc, what)
        return data

    def verify_blob(self, desc: Descriptor, what: str, name: str | None = None) -> None:
        """Hash a (large) blob in one streaming pass; raise naming ``what`` if it differs."""
        digest = hashlib.sha256()
        size = 0
        with self.open(name or self.blob_name(desc.digest)) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        check_digest(digest.hexdigest(), size, desc, what)

    def resolve(self, ref: str | None = None) -> ResolvedImage:
        """The image of this layout (see the module docstring for which one)."""
        if self.has("index.json"):
            return self._resolve_oci(ref)
        if self.has("manifest.json"):
            return self._resolve_docker(ref)
        raise InvalidArgument(f"image {self.path}: neither an OCI layout nor a docker archive")

    def _resolve_oci(self, ref: str | None) -> ResolvedImage:
        index = self.read_json("index.json")
        desc = _pick(index, ref, f"{self.path}: index.json")
        for depth in range(4):
            manifest = _parse_json(self.read_blob(desc, "manifest"), f"manifest {desc.digest}")
            if manifest.get("mediaType") not in INDEX_TYPES and "manifests" not in manifest:
                break
            desc = _pick(manifest, None, f"index {desc.digest}")
            if depth == 3:
                raise FailedPrecondition(f"image {self.path}: indexes nested too deeply")
        config_desc = Descriptor.parse(manifest.get("config"), f"manifest {desc.digest} config")
        config = _parse_json(self.read_blob(config_desc, "config"), f"config {config_desc.digest}")
        raw_layers = manifest.get("layers") or []
        if not isinstance(raw_layers, list):
            raise FailedPrecondition(f"manifest {desc.digest}: layers is not a list")
        layers = tuple(
            Descriptor.parse(raw, f"manifest {desc.digest} layer {n}")
            for n, raw in enumerate(raw_layers)
        )
        return ResolvedImage(desc.digest, config_desc.media_type, config, layers)

    def _resolve_docker(self, ref: str | None) -> ResolvedImage:
        """docker save's format: manifest.json lists config and layer tars by file name."""
        entries = self.read_json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise FailedPrecondition(f"image {self.path}: manifest.json lists no image")
        if ref is not None:
            entries = [e for e in entries if ref in (e.get("RepoTags") or [])]
            if not entries:
                raise NotFound(f"image {self.path} holds no image named {ref}")
        if len(entries) > 1:
            raise InvalidArgument(f"image {self.path} holds {len(entries)} images: name one")
        entry = entries[0]
        config_name = str(entry.get("Config", ""))
        config = self.read_json(config_name)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        names = entry.get("Layers") or []
        if len(diff_ids) != len(names):
            raise FailedPrecondition(
                f"image {self.path}: config has {len(diff_ids)} diff_ids for {len(names)} layers"
            )
        layers = []
        for name, diff_id in zip(names, diff_ids, strict=True):
            size = (
                self._members[name].size if self._tar is not None and name in self._members else -1
            )
            annotations = {"docker-archive.path": str(name)}
            layers.append(Descriptor(MEDIA_TYPE_LAYER, str(diff_id), size, annotations))
        digest = "sha256:" + hashlib.sha256(config_name.encode()).hexdigest()
        return ResolvedImage(
            digest, "application/vnd.docker.container.image.v1+json", config, tuple(layers)
        )

    def layer_name(self, desc: Descriptor) -> str:
        """Where a layer's bytes are in this source (docker archives name them by path)."""
        return desc.annotations.get("docker-archive.path") or self.blob_name(desc.digest)


def check_digest(hexdigest: str, size: int, desc: Descriptor, what: str) -> None:
    if desc.size >= 0 and size != desc.size:
        raise FailedPrecondition(
            f"{what} {desc.digest}: size mismatch (descriptor says {desc.size}, blob has {size})"
        )
    if "sha256:" + hexdigest != desc.digest:
        raise FailedPrecondition(
            f"{what} {desc.digest}: digest mismatch (content hashes to sha256:{hexdigest}); "
            "the blob is corrupt or was tampered with"
        )


def _pick(index: Any, ref: str | None, what: str) -> Descriptor:
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise FailedPrecondition(f"{what}: not an image index")
    manifests = [Descriptor.parse(m, what) for m in index["manifests"]]
    platforms = [(m.get("platform") or {}) for m in index["manifests"]]
    if not manifests:
        raise FailedPrecondition(f"{what}: lists no image")
    if ref is not None:
        for desc in manifests:
            names = {
                desc.annotations.get(ANNOTATION_CONTAINERD_NAME),
                desc.annotations.get(ANNOTATION_REF_NAME),
            }
            if ref in names:
                return desc
        raise NotFound(f"{what}: no image named {ref}")
    if len(manifests) == 1:
        return manifests[0]
    wasm = [
        d
        for d, p in zip(manifests, platforms, strict=True)
        if p.get("architecture") == WASM_ARCHITECTURE
    ]
    if len(wasm) == 1:
        return wasm[0]
    raise InvalidArgument(f"{what}: lists {len(manifests)} images; name one with --ref")


def _parse_json(data: bytes, what: str) -> Any:
    if len(data) > MAX_JSON_BLOB:
        raise FailedPrecondition(f"{what}: larger than {MAX_JSON_BLOB} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise FailedPrecondition(f"{what}: invalid JSON: {e}") from e


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdef" for ch in text)
