"""Wasm-layer images: runwasi's layout as `wasmtime-shim build` writes it, which layer is the
program (shim/oci/wasmlayers.py), and unpacking them for `wasmtime-shim run`."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shim.errors import FailedPrecondition
from shim.oci import wasmlayers
from wasmtime_shim.images.artifact import build_runwasi_image
from wasmtime_shim.images.build import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Blob,
    ImageConfig,
    canonical_json,
)
from wasmtime_shim.images.read import ImageSource
from wasmtime_shim.images.unpack import unpack_image

MODULE = b"\0asm\x01\0\0\0"
COMPONENT = b"\0asm\x0d\0\x01\0"
RUNWASI_LAYER = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"


def _blob(archive: Path, digest: str) -> bytes:
    with tarfile.open(archive) as tar:
        f = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
        assert f is not None
        return f.read()


@pytest.mark.parametrize(("wasm", "os_name"), [(MODULE, "wasip1"), (COMPONENT, "wasip2")])
def test_runwasi_layout_is_what_runwasi_reads(tmp_path: Path, wasm: bytes, os_name: str) -> None:
    config = ImageConfig(entrypoint=("/app.wasm",), cmd=("x",), labels=(("team", "w"),))
    built = build_runwasi_image(wasm, ref="localhost/r/app:1", config=config)
    path = built.write(tmp_path / "r.tar")
    with ImageSource(path) as source:
        resolved = source.resolve()
        index = source.read_json("index.json")
    manifest = json.loads(_blob(path, built.manifest_digest))
    [layer] = resolved.layers
    assert resolved.config_media_type == MEDIA_TYPE_CONFIG
    assert (layer.media_type, _blob(path, layer.digest)) == (RUNWASI_LAYER, wasm)
    assert resolved.config["rootfs"] == {"type": "layers", "diff_ids": []}
    assert (resolved.config["architecture"], resolved.config["os"]) == ("wasm", os_name)
    runtime = resolved.config["config"]
    assert (runtime["Entrypoint"], runtime["Cmd"]) == (["/app.wasm"], ["x"])
    unique = hashlib.sha256(layer.digest.removeprefix("sha256:").encode()).hexdigest()
    assert runtime["Labels"] == {"team": "w", "containerd.runwasi.layers": unique}
    assert "module.wasm.image/variant" not in manifest.get("annotations", {})
    assert manifest["layers"][0]["annotations"] == {"org.opencontainers.image.title": "app.wasm"}
    assert index["manifests"][0]["platform"] == {"architecture": "wasm", "os": os_name}


def test_two_programs_with_the_same_config_get_different_config_digests() -> None:
    config = ImageConfig(entrypoint=("/app.wasm",))
    one = build_runwasi_image(MODULE, ref="localhost/r/a:1", config=config)
    two = build_runwasi_image(MODULE + b"\0\x01x", ref="localhost/r/a:1", config=config)
    assert one.config_digest != two.config_digest


def _layer(media_type: str, title: str | None = None) -> dict[str, Any]:
    layer: dict[str, Any] = {"mediaType": media_type}
    if title is not None:
        layer["annotations"] = {"org.opencontainers.image.title": title}
    return layer


@pytest.mark.parametrize(
    ("layers", "arg0", "expected"),
    [
        ([_layer(RUNWASI_LAYER)], "whatever.wasm", 0),  # one layer: args[0] does not matter
        ([_layer("application/toml"), _layer("application/wasm")], None, 1),  # others ignored
        ([_layer(RUNWASI_LAYER, "a.wasm"), _layer(RUNWASI_LAYER, "b.wasm")], "/x/b.wasm#run", 1),
        ([_layer(RUNWASI_LAYER, "a.wasm"), _layer(RUNWASI_LAYER, "/y/b.wasm")], "b.wasm", 1),
    ],
)
def test_the_program_layer_is_picked_as_runwasi_would(
    layers: list[dict[str, Any]], arg0: str | None, expected: int
) -> None:
    assert wasmlayers.pick(layers, arg0, "img") == expected


@pytest.mark.parametrize(
    ("layers", "arg0", "message"),
    [
        ([_layer(MEDIA_TYPE_LAYER_GZIP)], "a.wasm", "no layer is a wasm binary"),
        ([_layer(RUNWASI_LAYER), _layer(RUNWASI_LAYER)], "a.wasm", "none is titled after"),
        (
            [_layer(RUNWASI_LAYER, "a.wasm"), _layer(RUNWASI_LAYER, "a.wasm")],
            "a.wasm",
            "ambiguous",
        ),
    ],
)
def test_an_unclear_program_is_refused_naming_why(
    layers: list[dict[str, Any]], arg0: str, message: str
) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        wasmlayers.pick(layers, arg0, "img")


def _layout(tmp_path: Path, config: dict[str, Any], layers: list[tuple[str, bytes, str]]) -> Path:
    """An OCI layout dir with one image: ``layers`` as (media type, bytes, title)."""
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs = []
    for media_type, data, title in layers:
        blob = Blob(media_type, data)
        (blobs / blob.digest[7:]).write_bytes(data)
        descs.append(blob.descriptor(annotations={"org.opencontainers.image.title": title}))
    config_blob = Blob(MEDIA_TYPE_CONFIG, canonical_json(config))
    (blobs / config_blob.digest[7:]).write_bytes(config_blob.data)
    manifest = Blob(
        MEDIA_TYPE_MANIFEST,
        canonical_json({"schemaVersion": 2, "config": config_blob.descriptor(), "layers": descs}),
    )
    (blobs / manifest.digest[7:]).write_bytes(manifest.data)
    root = tmp_path / "layout"
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"manifests": [manifest.descriptor()]}))
    return root


def test_unpack_writes_the_chosen_layer_where_the_entrypoint_finds_it(tmp_path: Path) -> None:
    """Like runwasi's oci-tar-builder: a relative Entrypoint, no titles on a single layer."""
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Entrypoint": ["hello.wasm#main"], "Cmd": ["1"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    layout = _layout(tmp_path, config, [(RUNWASI_LAYER, MODULE, "")])
    unpacked = unpack_image(layout, tmp_path / "root")
    assert unpacked.artifact and unpacked.entrypoint == ("/hello.wasm#main",)
    assert (tmp_path / "root" / "hello.wasm").read_bytes() == MODULE
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["hello.wasm"]


def test_unpack_picks_among_several_wasm_layers_by_title(tmp_path: Path) -> None:
    config = {"architecture": "wasm", "os": "wasip1", "config": {"Entrypoint": ["/b.wasm"]}}
    layers = [(RUNWASI_LAYER, MODULE, "a.wasm"), (RUNWASI_LAYER, COMPONENT, "b.wasm")]
    unpack_image(_layout(tmp_path, config, layers), tmp_path / "root")
    assert (tmp_path / "root" / "b.wasm").read_bytes() == COMPONENT
