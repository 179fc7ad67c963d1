"""wasmtime_shim/images/build.py: deterministic digests and a layout containerd can import."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.errors import InvalidArgument
from wasmtime_shim.images.build import Compression, ImageConfig, OciImage, build_image, build_layer

REF = "docker.io/library/hello-wasm:v1"
FILES: dict[str, bytes | Path] = {
    "/app/hello.wasm": b"\0asm\1\0\0\0",
    "/etc/greeting": b"hi\n",
    "/app/data/x.txt": b"x",
}
CONFIG = ImageConfig(entrypoint=("/app/hello.wasm",), cmd=("7",), env=("A=1",), working_dir="/app")


def members(archive: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            out[info.name] = (info, data)
    return out


def blob(archive: bytes, digest: str) -> bytes:
    data = members(archive)["blobs/sha256/" + digest.removeprefix("sha256:")][1]
    assert data is not None
    return data


def test_same_inputs_give_the_same_bytes_and_digests() -> None:
    first = build_image(FILES, ref=REF, config=CONFIG)
    reordered = dict(reversed(list(FILES.items())))
    second = build_image(reordered, ref=REF, config=CONFIG)
    assert first == second
    assert first.archive == second.archive


@pytest.mark.parametrize(
    "change",
    [
        {"files": {**FILES, "/etc/greeting": b"hello\n"}},
        {"config": ImageConfig(entrypoint=("/app/other.wasm",))},
        {"ref": "docker.io/library/hello-wasm:v2"},
        {"compression": Compression.NONE},
    ],
)
def test_any_change_changes_the_manifest_digest(change: dict[str, object]) -> None:
    args: dict[str, object] = {"files": FILES, "ref": REF, "config": CONFIG}
    base = build_image(**args)  # type: ignore[arg-type]
    changed = build_image(**{**args, **change})  # type: ignore[arg-type]
    assert changed.archive != base.archive
    if "ref" not in change:
        assert changed.manifest_digest != base.manifest_digest


def test_layout_is_valid_and_self_consistent() -> None:
    built = build_image(FILES, ref=REF, config=CONFIG)
    entries = members(built.archive)
    names = list(entries)
    assert names[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
    assert json.loads(entries["oci-layout"][1] or b"") == {"imageLayoutVersion": "1.0.0"}
    for name, (info, data) in entries.items():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
        if name.startswith("blobs/sha256/"):
            assert data is not None
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]

    index = json.loads(entries["index.json"][1] or b"")
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [entry] = index["manifests"]
    assert entry["digest"] == built.manifest_digest
    assert entry["platform"] == {"architecture": "wasm", "os": "wasip1"}
    assert entry["annotations"]["io.containerd.image.name"] == REF
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest_bytes = blob(built.archive, built.manifest_digest)
    assert entry["size"] == len(manifest_bytes)

    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    assert manifest["config"]["digest"] == built.config_digest
    [layer_desc] = manifest["layers"]
    assert layer_desc["digest"] == built.layer_digest
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"

    config = json.loads(blob(built.archive, built.config_digest))
    assert config["architecture"] == "wasm"
    assert config["os"] == "wasip1"
    assert config["config"] == {
        "Entrypoint": ["/app/hello.wasm"],
        "Cmd": ["7"],
        "Env": ["A=1"],
        "WorkingDir": "/app",
    }
    layer = gzip.decompress(blob(built.archive, built.layer_digest))
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()],
    }
    assert built.diff_id == config["rootfs"]["diff_ids"][0]


def test_layer_has_sorted_entries_with_every_parent_dir() -> None:
    layer = members(build_layer(FILES))
    assert list(layer) == [
        "app",
        "app/data",
        "app/data/x.txt",
        "app/hello.wasm",
        "etc",
        "etc/greeting",
    ]
    assert layer["app"][0].isdir() and layer["app"][0].mode == 0o755
    assert layer["etc/greeting"][0].mode == 0o644
    assert layer["etc/greeting"][1] == b"hi\n"


def test_uncompressed_layer_digest_is_its_diff_id() -> None:
    built = build_image(FILES, ref=REF, compression=Compression.NONE)
    assert built.layer_digest == built.diff_id
    manifest = json.loads(blob(built.archive, built.manifest_digest))
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"


def test_host_files_are_copied_with_their_exec_bit(tmp_path: Path) -> None:
    plain, tool = tmp_path / "plain", tmp_path / "tool"
    plain.write_bytes(b"p")
    tool.write_bytes(b"t")
    tool.chmod(0o700)
    layer = members(build_layer({"plain": plain, "bin/tool": tool}))
    assert (layer["plain"][0].mode, layer["plain"][1]) == (0o644, b"p")
    assert (layer["bin/tool"][0].mode, layer["bin/tool"][1]) == (0o755, b"t")


def test_write_puts_the_archive_on_disk(tmp_path: Path) -> None:
    built = build_image(FILES, ref=REF)
    dest = built.write(tmp_path / "sub" / "image.tar")
    assert dest.read_bytes() == built.archive
    assert [p.name for p in dest.parent.iterdir()] == ["image.tar"]


@pytest.mark.parametrize(
    "files",
    [
        {"../etc/passwd": b""},
        {"a/../../b": b""},
        {"": b""},
        {"/": b""},
        {"/a": b"1", "a": b"2"},
        {"a": b"1", "a/b": b"2"},
        {"a": "text, not bytes"},
        {"a": Path("/nonexistent/file")},
    ],
)
def test_bad_layer_paths_are_refused(files: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        build_layer(files)  # type: ignore[arg-type]


@pytest.mark.parametrize("ref", ["", "with space:1", "trailing/", ":tag"])
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(InvalidArgument):
        build_image(FILES, ref=ref)


def test_bad_config_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        ImageConfig(env=("NOVALUE",))
    with pytest.raises(InvalidArgument):
        ImageConfig(working_dir="relative")
    with pytest.raises(InvalidArgument):
        ImageConfig(entrypoint="/app.wasm")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ref", "tag"),
    [
        ("docker.io/library/x:1.0", "1.0"),
        ("localhost:5000/x", "latest"),
        ("localhost:5000/x:t", "t"),
        ("x", "latest"),
    ],
)
def test_ref_name_annotation_is_the_tag(ref: str, tag: str) -> None:
    built = build_image(FILES, ref=ref)
    index = json.loads(members(built.archive)["index.json"][1] or b"")
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == tag


_segment = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
_paths = st.lists(_segment, min_size=1, max_size=4).map("/".join)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_paths, st.binary(max_size=64), min_size=1, max_size=8))
def test_layer_is_order_independent_and_complete(files: dict[str, bytes]) -> None:
    names = set(files)
    if any(other.startswith(name + "/") for name in names for other in names):
        with pytest.raises(InvalidArgument):
            build_layer(files)
        return
    layer = build_layer(files)
    assert layer == build_layer(dict(reversed(list(files.items()))))
    entries = members(layer)
    parents = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    assert set(entries) == names | parents
    for name, data in files.items():
        assert entries[name][1] == data
    built: OciImage = build_image(files, ref=REF)
    assert built.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
