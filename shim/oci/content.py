"""Loading the program of a wasm-layer image straight from containerd's content store.

For a container whose image keeps its program as a layer (runwasi's layout or a CNCF wasm OCI
artifact: the image config says architecture ``wasm`` and a layer is a wasm binary, see
``shim/oci/wasmlayers.py``), the program is not a file in the rootfs: containerd unpacks no
layer of such an image (it has no diff_ids) and passes nothing of it to the shim but the
container's ``image`` name. This module walks containerd's gRPC API the way runwasi does,
container -> image -> (index ->) manifest -> config + layers, and writes the program's layer to
a directory the shim chooses, checking its digest and size.

The differences from runwasi: an index is followed to its ``wasm`` manifest (runwasi reads the
image's target as a manifest); among several wasm layers the one titled after args[0]'s file
name is taken (runwasi refuses several); and on a read error ``load_wasm_from_content_store``
raises (FailedPrecondition / NotFound, the message naming the container, image and blob) where
runwasi logs and falls back to the rootfs. ``None`` means only "this image keeps no program in
a layer" (or the container names no image): use the rootfs as usual.

Everything here is blocking grpcio (a unix socket, small blobs); the daemon calls it from a
thread at Create, like the other host work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shim.api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from shim.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from shim.errors import FailedPrecondition, NotFound, ShimError, Unavailable
from shim.oci import wasmlayers
from shim.oci.mediatypes import INDEX_TYPES, MAX_JSON_BLOB, MAX_WASM_LAYER, WASM_ARCHITECTURE

NAMESPACE_METADATA = "containerd-namespace"
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class WasmArtifact:
    """A wasm program read from the content store and written to the host."""

    path: str  # host file holding the program's layer, digest-checked
    media_type: str  # the layer's media type
    digest: str  # the layer's digest
    layer: int  # its position among the manifest's layers
    image: str  # the image reference the container names
    manifest_digest: str
    config_media_type: str  # an OCI image config (runwasi's layout) or a CNCF wasm config
    title: str | None  # the layer's org.opencontainers.image.title, if any
    args: tuple[str, ...]  # config Entrypoint + Cmd, or ()
    env: tuple[str, ...]  # config Env, or ()
    working_dir: str | None


def load_wasm_from_content_store(
    grpc_address: str,
    namespace: str,
    container_id: str,
    dest_dir: str,
    *,
    arg0: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> WasmArtifact | None:
    """Write the wasm program of ``container_id``'s image to ``dest_dir`` if the image keeps it
    in a layer; ``arg0`` (the spec's args[0]) picks among several wasm layers.

    ``grpc_address`` is containerd's gRPC socket (``/run/containerd/containerd.sock`` or
    ``unix://...``). Returns None when the container names no image or the image has no wasm
    layer. Raises NotFound (container or image gone), FailedPrecondition (a blob missing,
    corrupt or malformed, or several wasm layers and none named: the message says which) or
    Unavailable (containerd unreachable).
    """
    target = grpc_address if grpc_address.startswith("unix:") else f"unix://{grpc_address}"
    with grpc.insecure_channel(target) as channel:
        store = _Store(channel, namespace, timeout)
        container = store.call(
            "container " + container_id,
            containers_pb2_grpc.ContainersStub(channel).Get,
            containers_pb2.GetContainerRequest(id=container_id),
        ).container
        ref = container.image
        if not ref:
            return None
        image = store.call(
            "image " + ref,
            images_pb2_grpc.ImagesStub(channel).Get,
            images_pb2.GetImageRequest(name=ref),
        ).image
        what = f"image {ref} of container {container_id}"
        desc: dict[str, Any] = {
            "mediaType": image.target.media_type,
            "digest": image.target.digest,
            "size": image.target.size,
        }
        manifest = store.read_json(desc, f"{what}: manifest")
        for _ in range(4):
            if manifest.get("mediaType") not in INDEX_TYPES and "manifests" not in manifest:
                break
            picked = _pick_wasm(manifest.get("manifests"), what)
            if picked is None:
                return None
            desc = picked
            manifest = store.read_json(desc, f"{what}: manifest")
        else:
            raise FailedPrecondition(f"{what}: indexes nested too deeply")
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not wasmlayers.wasm_layer_indexes(layers):
            return None
        config_desc = manifest.get("config")
        if not isinstance(config_desc, dict):
            raise FailedPrecondition(f"{what}: manifest {desc['digest']} names no config")
        config = store.read_json(config_desc, f"{what}: config")
        if not wasmlayers.is_wasm_config(config):
            return None
        n = wasmlayers.pick(layers, arg0, what)
        layer = layers[n]
        path = store.write_blob(layer, f"{what}: wasm layer {n}", dest_dir)
    runtime: dict[str, Any] = config["config"] if isinstance(config.get("config"), dict) else {}
    return WasmArtifact(
        path=path,
        media_type=str(layer["mediaType"]),
        digest=str(layer.get("digest")),
        layer=n,
        image=ref,
        manifest_digest=str(desc["digest"]),
        config_media_type=str(config_desc.get("mediaType", "")),
        title=wasmlayers.title(layer),
        args=_strings(runtime.get("Entrypoint")) + _strings(runtime.get("Cmd")),
        env=_strings(runtime.get("Env")),
        working_dir=str(runtime["WorkingDir"]) if runtime.get("WorkingDir") else None,
    )


class _Store:
    """The calls, with the namespace header, a deadline and errors turned into ShimErrors."""

    def __init__(self, channel: grpc.Channel, namespace: str, timeout: float) -> None:
        self.content = content_pb2_grpc.ContentStub(channel)
        self.metadata = ((NAMESPACE_METADATA, namespace),)
        self.timeout = timeout

    def call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(what, e) from e

    def chunks(self, desc: dict[str, Any], what: str, limit: int) -> Iterable[bytes]:
        """The blob's bytes, asked for by its declared size (which must be at most
        ``limit``); a store answering more than that is refused before it is kept."""
        digest = _digest(desc, what)
        size = desc.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > limit:
            raise FailedPrecondition(f"{what} {digest}: size {size!r} (at most {limit} here)")
        request = content_pb2.ReadContentRequest(digest=digest, offset=0, size=size)
        got = 0
        try:
            stream = self.content.Read(request, metadata=self.metadata, timeout=self.timeout)
            for response in stream:
                got += len(response.data)
                if got > size:
                    raise FailedPrecondition(
                        f"{what} {digest}: the content store returned more than its {size} bytes"
                    )
                yield response.data
        except grpc.RpcError as e:
            raise _error(f"{what} {digest}", e) from e

    def read_json(self, desc: dict[str, Any], what: str) -> dict[str, Any]:
        data = b"".join(self.chunks(desc, what, MAX_JSON_BLOB))
        _check(desc, hashlib.sha256(data).hexdigest(), len(data), what)
        try:
            value = json.loads(data)
        except ValueError as e:
            raise FailedPrecondition(f"{what} {desc['digest']}: invalid JSON: {e}") from e
        if not isinstance(value, dict):
            raise FailedPrecondition(f"{what} {desc['digest']}: not a JSON object")
        return value

    def write_blob(self, desc: dict[str, Any], what: str, dest_dir: str) -> str:
        """Stream a blob to ``dest_dir/<hex>.wasm`` (tmp + rename, only once verified)."""
        digest = _digest(desc, what)
        os.makedirs(dest_dir, exist_ok=True)
        final = os.path.join(dest_dir, digest.removeprefix("sha256:") + ".wasm")
        tmp = f"{final}.{os.getpid()}.tmp"
        hasher = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in self.chunks(desc, what, MAX_WASM_LAYER):
                    hasher.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            _check(desc, hasher.hexdigest(), size, what)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return final


def _pick_wasm(manifests: Any, what: str) -> dict[str, Any] | None:
    """The wasm-platform manifest of an index (the only one, if the index has one entry)."""
    if not isinstance(manifests, list) or not manifests:
        raise FailedPrecondition(f"{what}: index lists no manifests")
    if len(manifests) == 1 and isinstance(manifests[0], dict):
        return manifests[0]
    for entry in manifests:
        if isinstance(entry, dict):
            platform = entry.get("platform")
            if isinstance(platform, dict) and platform.get("architecture") == WASM_ARCHITECTURE:
                return entry
    return None


def _digest(desc: dict[str, Any], what: str) -> str:
    digest = desc.get("digest")
    # Checked in full, not by prefix: the digest names a file in the bundle.
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise FailedPrecondition(f"{what}: unsupported or missing digest {digest!r}")
    return digest


def _check(desc: dict[str, Any], hexdigest: str, size: int, what: str) -> None:
    if size != desc.get("size") or "sha256:" + hexdigest != desc.get("digest"):
        raise FailedPrecondition(
            f"{what} {desc.get('digest')}: content store returned {size} bytes hashing to "
            f"sha256:{hexdigest}; the blob is corrupt"
        )


def _error(what: str, e: grpc.RpcError) -> ShimError:
    code = e.code() if isinstance(e, grpc.Call) else None
    detail = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: not found in containerd ({detail})")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"{what}: containerd did not answer ({detail})")
    return FailedPrecondition(f"{what}: containerd said {code}: {detail}")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()
