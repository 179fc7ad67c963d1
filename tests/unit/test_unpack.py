"""wasmtime_shim/images/unpack.py: layers in order, whiteouts, links, compressions, hostile
tars, digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from shim.errors import FailedPrecondition
from wasmtime_shim.images.unpack import unpack_image

Entry = tuple[str, str, bytes | str | None]  # (name, kind: f|d|l(symlink)|h(hardlink), data)


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "d" else 0o644
            if kind == "f":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}[kind]
            if kind in "lh":
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    return buf.getvalue()


def write_layout(
    directory: Path,
    layers: list[list[Entry]],
    compression: str = "gzip",
    corrupt: int | None = None,
) -> Path:
    """An OCI layout dir with one image of these layers (layer `corrupt` altered after hashing)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    descs, diff_ids = [], []
    for n, entries in enumerate(layers):
        raw = layer_tar(entries)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        if compression == "gzip":
            data, mt = gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compression == "zstd":
            data = zstandard.ZstdCompressor().compress(raw)
            mt = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            data, mt = raw, "application/vnd.oci.image.layer.v1.tar"
        digest = put(data)
        if n == corrupt:
            path = blobs / digest.removeprefix("sha256:")
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        descs.append({"mediaType": mt, "digest": digest, "size": len(data)})
    config = json.dumps(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {"Entrypoint": ["/app.wasm"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return directory


def tree(root: Path) -> dict[str, str]:
    """path -> content / 'dir' / '-> target', for every entry under root."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_text()
    return out


LOWER: list[Entry] = [
    ("etc", "d", None),
    ("etc/keep", "f", b"keep"),
    ("etc/gone", "f", b"gone"),
    ("var", "d", None),
    ("var/cache", "d", None),
    ("var/cache/old", "f", b"old"),
    ("var/cache/sub", "d", None),
    ("var/cache/sub/deep", "f", b"deep"),
    ("app.wasm", "f", b"\0asm\x01\0\0\0"),
]
UPPER: list[Entry] = [
    ("etc/.wh.gone", "f", b""),
    ("var/cache/.wh..wh..opq", "f", b""),
    ("var/cache/new", "f", b"new"),
    ("bin", "d", None),
    ("bin/app", "h", "app.wasm"),
    ("bin/link", "l", "../app.wasm"),
    ("bin/abs", "l", "/etc/keep"),
]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layers_apply_in_order_with_whiteouts_and_links(tmp_path: Path, compression: str) -> None:
    layout = write_layout(tmp_path / "img", [LOWER, UPPER], compression)
    result = unpack_image(layout, tmp_path / "root")
    root = tmp_path / "root"
    assert tree(root) == {
        "app.wasm": "\0asm\x01\0\0\0",
        "bin": "dir",
        "bin/abs": "-> /etc/keep",
        "bin/app": "\0asm\x01\0\0\0",
        "bin/link": "-> ../app.wasm",
        "etc": "dir",
        "etc/keep": "keep",
        "var": "dir",
        "var/cache": "dir",
        "var/cache/new": "new",
    }
    assert os.stat(root / "bin/app").st_ino == os.stat(root / "app.wasm").st_ino
    assert result.entrypoint == ("/app.wasm",)


def test_a_later_layer_replaces_a_dir_with_a_file_and_back(tmp_path: Path) -> None:
    first: list[Entry] = [("x", "d", None), ("x/a", "f", b"a"), ("y", "f", b"file")]
    second: list[Entry] = [("x", "f", b"now a file"), ("y", "d", None), ("y/b", "f", b"b")]
    unpack_image(write_layout(tmp_path / "img", [first, second]), tmp_path / "root")
    assert tree(tmp_path / "root") == {"x": "now a file", "y": "dir", "y/b": "b"}


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("../escape", "f", b"x")], "'..' would climb out"),
        ([("a/../../escape", "f", b"x")], "'..' would climb out"),
        ([("/abs-escape", "f", b"x")], "absolute path"),
        ([("out", "l", "/"), ("out/escape", "f", b"x")], "is a symlink"),
        ([("out", "l", ".."), ("out/escape", "f", b"x")], "points outside"),
        ([("d", "d", None), ("d/up", "l", "../../escape")], "points outside"),
        ([("hard", "h", "../escape")], "'..' would climb out"),
        ([("hard", "h", "/etc/passwd")], "absolute path"),
    ],
)
def test_hostile_tars_are_refused_and_nothing_is_written(
    tmp_path: Path, entries: list[Entry], why: str
) -> None:
    base = tmp_path / "box"
    (base / "target").parent.mkdir(parents=True)
    layout = write_layout(tmp_path / "img", [[("ok", "f", b"ok")], entries])
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(FailedPrecondition, match=why) as err:
        unpack_image(layout, base / "target")
    assert "layer 1" in str(err.value)
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert after == before  # no target, no staging dir, no escape file anywhere
    assert not (tmp_path / "escape").exists() and not Path("/abs-escape").exists()


def test_a_symlink_planted_in_a_lower_layer_cannot_be_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lower: list[Entry] = [("dir", "l", str(outside))]
    upper: list[Entry] = [("dir/pwned", "f", b"x")]
    with pytest.raises(FailedPrecondition, match="is a symlink"):
        unpack_image(write_layout(tmp_path / "img", [lower, upper]), tmp_path / "root")
    assert list(outside.iterdir()) == []


def test_a_corrupt_layer_is_refused_naming_the_layer(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "img", [LOWER, UPPER], corrupt=1)
    manifest_layers = _layers(layout)
    with pytest.raises(FailedPrecondition) as err:
        unpack_image(layout, tmp_path / "root")
    message = str(err.value)
    assert "layer 1" in message and manifest_layers[1] in message and "digest mismatch" in message
    assert not (tmp_path / "root").exists()


def test_a_wrong_diff_id_is_refused(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "img", [LOWER])
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config_path = blobs / manifest["config"]["digest"][7:]
    config = json.loads(config_path.read_text())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    data = json.dumps(config).encode()
    new = hashlib.sha256(data).hexdigest()
    (blobs / new).write_bytes(data)
    manifest["config"].update(digest="sha256:" + new, size=len(data))
    mdata = json.dumps(manifest).encode()
    mnew = hashlib.sha256(mdata).hexdigest()
    (blobs / mnew).write_bytes(mdata)
    index["manifests"][0].update(digest="sha256:" + mnew, size=len(mdata))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(FailedPrecondition, match="diff_id"):
        unpack_image(layout, tmp_path / "root")


def test_docker_archive(tmp_path: Path) -> None:
    raw = layer_tar(LOWER)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    config = json.dumps(
        {"config": {"Cmd": ["/app.wasm"]}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    ).encode()
    archive = tmp_path / "docker.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (
            (
                "manifest.json",
                json.dumps(
                    [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l1/layer.tar"]}]
                ).encode(),
            ),
            ("c.json", config),
            ("l1/layer.tar", raw),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = unpack_image(archive, tmp_path / "root")
    assert result.cmd == ("/app.wasm",)
    assert (tmp_path / "root" / "etc" / "keep").read_text() == "keep"


def test_unpack_refuses_a_non_empty_target(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "mine").write_text("precious")
    with pytest.raises(Exception, match="not an empty directory"):
        unpack_image(write_layout(tmp_path / "img", [LOWER]), tmp_path / "root")
    assert (tmp_path / "root" / "mine").read_text() == "precious"


def _layers(layout: Path) -> list[str]:
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    return [layer["digest"] for layer in manifest["layers"]]
