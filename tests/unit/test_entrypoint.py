"""Entrypoint resolution and sniffing (runtimes/wasmtime/entry.py): pure stdlib, in-process.

The rootfs is a temp directory; "outside" files live next to it, so a resolution that
escapes would find them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimes.base import EntrypointKind, Preopen, RunConfig
from runtimes.wasmtime.entry import resolve, scoped_lookup, sniff, split_func
from shim.errors import FailedPrecondition, InvalidArgument, NotFound

MODULE = b"\0asm\x01\0\0\0"
COMPONENT = b"\0asm\x0d\0\x01\0"


def cfg(root: Path, *args: str, cwd: str = "/", env: tuple[str, ...] = ()) -> RunConfig:
    return RunConfig(
        container_id="c",
        rootfs=str(root),
        args=args,
        env=env,
        cwd=cwd,
        preopens=(Preopen(str(root), "/", False),),
    )


def put(root: Path, guest: str, data: bytes = MODULE) -> Path:
    path = root / guest.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    r.mkdir()
    return r


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (MODULE, EntrypointKind.MODULE),
        (MODULE[:6], EntrypointKind.MODULE),  # truncated: wasmtime will say why
        (COMPONENT, EntrypointKind.COMPONENT),
        (b"(module)", EntrypointKind.WAT),
        (b"  \n\t(module $m (func))", EntrypointKind.WAT),
        (b";; a comment\n(component)", EntrypointKind.WAT),
        (b"(; block (; nested ;) ;)\n;; line\n(module", EntrypointKind.WAT),
        (b"\xef\xbb\xbf(module)", EntrypointKind.WAT),
        (b"(modules)", EntrypointKind.OTHER),
        (b"(; unterminated (module)", EntrypointKind.OTHER),
        (b";; no newline (module)", EntrypointKind.OTHER),
        (b"\x7fELF\x02\x01\x01", EntrypointKind.ELF),
        (b"#!/bin/sh\necho hi\n", EntrypointKind.SCRIPT),
        (b"", EntrypointKind.OTHER),
        (b"PK\x03\x04", EntrypointKind.OTHER),
    ],
)
def test_sniff(head: bytes, kind: EntrypointKind) -> None:
    assert sniff(head) is kind


@pytest.mark.parametrize(
    ("arg0", "expect"),
    [
        ("/app.wasm", ("/app.wasm", None)),
        ("/app.wasm#serve", ("/app.wasm", "serve")),
        ("/odd#dir/app.wasm#main", ("/odd#dir/app.wasm", "main")),
    ],
)
def test_split_func(arg0: str, expect: tuple[str, str | None]) -> None:
    assert split_func(arg0) == expect


@pytest.mark.parametrize("arg0", ["/app.wasm#", "#main"])
def test_split_func_refuses_empty_parts(arg0: str) -> None:
    with pytest.raises(InvalidArgument):
        split_func(arg0)


# --------------------------------------------------------------------------- resolve


def test_absolute(root: Path) -> None:
    host = put(root, "/app/main.wasm")
    e = resolve(cfg(root, "/app/main.wasm", "arg"), None)
    assert (e.host_path, e.guest_path, e.func, e.kind) == (
        str(host),
        "/app/main.wasm",
        None,
        EntrypointKind.MODULE,
    )


@pytest.mark.parametrize("arg0", ["./main.wasm", "sub/../main.wasm", "main.wasm"])
def test_relative_to_cwd(root: Path, arg0: str) -> None:
    put(root, "/srv/main.wasm")
    (root / "srv" / "sub").mkdir()
    e = resolve(cfg(root, arg0, cwd="/srv"), None)
    assert e.guest_path == "/srv/main.wasm"


def test_path_lookup_in_order_skipping_directories(root: Path) -> None:
    (root / "a" / "tool.wasm").mkdir(parents=True)  # a directory named like the tool
    put(root, "/b/tool.wasm", COMPONENT)
    put(root, "/c/tool.wasm")
    e = resolve(cfg(root, "tool.wasm"), "/missing:/a:/b:/c")
    assert (e.guest_path, e.kind) == ("/b/tool.wasm", EntrypointKind.COMPONENT)


def test_without_a_path_a_bare_name_is_looked_up_in_the_working_directory_only(
    root: Path,
) -> None:
    """The caller reads PATH from the spec (shim.oci.spec.getenv); None means the spec has
    none, and the env in the RunConfig is not searched again."""
    put(root, "/opt/bin/tool.wasm")
    env = ("HOME=/", "PATH=/usr/bin:/opt/bin")
    with pytest.raises(NotFound, match="working directory"):
        resolve(cfg(root, "tool.wasm", env=env), None)
    assert resolve(cfg(root, "tool.wasm", env=env), "/opt/bin").guest_path == "/opt/bin/tool.wasm"


def test_bare_name_falls_back_to_cwd(root: Path) -> None:
    put(root, "/work/tool.wasm")
    e = resolve(cfg(root, "tool.wasm", cwd="/work"), "/usr/bin")
    assert e.guest_path == "/work/tool.wasm"


def test_func_suffix(root: Path) -> None:
    put(root, "/m.wat", b"(module)")
    e = resolve(cfg(root, "/m.wat#handler"), None)
    assert (e.guest_path, e.func, e.kind) == ("/m.wat", "handler", EntrypointKind.WAT)


def test_symlink_inside_rootfs_is_followed_within_it(root: Path) -> None:
    put(root, "/real/app.wasm")
    (root / "bin").mkdir()
    os.symlink("/real/app.wasm", root / "bin" / "abs")  # absolute: means rootfs/real/...
    os.symlink("../real/app.wasm", root / "bin" / "rel")
    for name in ("abs", "rel"):
        e = resolve(cfg(root, f"/bin/{name}"), None)
        assert (e.host_path, e.guest_path) == (str(root / "real" / "app.wasm"), "/real/app.wasm")


def test_symlink_escape_is_refused(root: Path, tmp_path: Path) -> None:
    outside = put(tmp_path, "/outside/secret.wasm")
    os.symlink(str(outside), root / "abs")  # a host path: inside the rootfs it names nothing
    os.symlink("../../../../../" + str(outside.relative_to("/")), root / "dots")
    (root / "dir").mkdir()
    os.symlink(str(tmp_path / "outside"), root / "dir" / "link")
    for arg0 in ("/abs", "/dots", "/dir/link/secret.wasm", "/../outside/secret.wasm"):
        with pytest.raises(NotFound, match="not found"):
            resolve(cfg(root, arg0), None)


def test_symlink_loop(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(FailedPrecondition, match="symbolic links"):
        resolve(cfg(root, "/a"), None)


def test_elf_is_refused_naming_the_file(root: Path) -> None:
    (root / "bin").mkdir()
    shutil.copy(sys.executable, root / "bin" / "sh")
    with pytest.raises(FailedPrecondition) as info:
        resolve(cfg(root, "sh"), "/bin")
    assert str(info.value) == "/bin/sh is an ELF executable, not a wasm module"


def test_script_is_refused_naming_the_interpreter(root: Path) -> None:
    put(root, "/run.sh", b"#!/bin/sh -e\necho hi\n")
    with pytest.raises(FailedPrecondition) as info:
        resolve(cfg(root, "/run.sh"), None)
    assert str(info.value) == "/run.sh is a script (#!/bin/sh -e), not a wasm module"


@pytest.mark.parametrize(("data", "what"), [(b"", "empty"), (b"hello", "neither wasm nor WAT")])
def test_other_content_is_refused(root: Path, data: bytes, what: str) -> None:
    put(root, "/x.wasm", data)
    with pytest.raises(FailedPrecondition, match=what):
        resolve(cfg(root, "/x.wasm"), None)


def test_directory_is_refused(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(FailedPrecondition, match="/d is a directory"):
        resolve(cfg(root, "/d"), None)


@pytest.mark.parametrize(
    ("arg0", "path_env", "match"),
    [
        ("/nope.wasm", None, "/nope.wasm not found"),
        ("nope.wasm", "/bin:/usr/bin", r"'nope.wasm' not found in PATH \(/bin:/usr/bin\)"),
        ("nope.wasm", None, "not found in the working directory /"),
        ("/file.wasm/inner.wasm", None, "not found"),  # a file used as a directory
    ],
)
def test_missing_is_not_found_naming_it(
    root: Path, arg0: str, path_env: str | None, match: str
) -> None:
    put(root, "/file.wasm")
    with pytest.raises(NotFound, match=match):
        resolve(cfg(root, arg0), path_env)


def test_no_args(root: Path) -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        resolve(cfg(root), None)


# --------------------------------------------------------------------------- property


names = st.sampled_from(["a", "b", "c", "..", ".", ""])
link_targets = st.lists(names, min_size=1, max_size=5).map("/".join).filter(bool) | st.sampled_from(
    ["/", "/a", "../../..", "/../../..", "OUTSIDE"]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    links=st.dictionaries(st.sampled_from(["a", "b", "c", "a/b", "b/c"]), link_targets),
    query=st.lists(names, max_size=6).map("/".join),
)
def test_lookup_never_leaves_the_root(
    tmp_path_factory: pytest.TempPathFactory, links: dict[str, str], query: str
) -> None:
    base = tmp_path_factory.mktemp("prop")
    root, outside = base / "root", base / "outside"
    outside.mkdir()
    (outside / "a").write_bytes(b"outside")
    root.mkdir()
    for d in ("a", "b", "c"):
        (root / d).mkdir(exist_ok=True)
    for name, target in links.items():
        link = root / name
        if link.parent.is_dir() and not link.parent.is_symlink():
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            target = str(outside) if target == "OUTSIDE" else target
            os.symlink(target, link)
    try:
        hit = scoped_lookup(str(root), "/" + query)
    except FailedPrecondition:
        return  # a loop
    if hit is not None:
        real = os.path.realpath(hit[0])
        assert real == hit[0]  # no symlink left to follow on the host
        assert os.path.commonpath([real, str(root)]) == str(root)
        assert hit[1].startswith("/")
