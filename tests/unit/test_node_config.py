"""config.toml editing: every byte we do not own survives install and comes back on uninstall."""

from __future__ import annotations

import difflib

import pytest
import tomlkit

from shim.errors import AlreadyExists, InvalidArgument
from wasmtime_shim.node import config as cfg

V2_WITH_COMMENTS = """\
# node config, hand-edited: keep me
version = 2
root = "/var/lib/containerd"   # trailing comment

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"   # the default
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
    # crun for the wasm annotation crowd
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "/usr/bin/crun"

[grpc]
  address = "/run/containerd/containerd.sock"
# last line comment
"""

V3 = """\
version = 3
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = 'registry.k8s.io/pause:3.10'
"""

ENTRY = cfg.RuntimeEntry(pod_annotations=cfg.WASM_POD_ANNOTATIONS)


def only_insertions(before: str, after: str) -> list[str]:
    """The lines `after` adds; fails if any line of `before` was changed or dropped."""
    added = []
    for line in difflib.ndiff(before.splitlines(True), after.splitlines(True)):
        assert not line.startswith("- "), f"original line changed or removed: {line!r}"
        if line.startswith("+ "):
            added.append(line[2:])
    return added


@pytest.mark.parametrize(
    "original",
    [V2_WITH_COMMENTS, V3, "version = 2\n", "version = 2\n[grpc]\n  address = 'x'\n", ""],
    ids=["v2-comments", "v3", "minimal", "no-plugins", "empty-v1"],
)
def test_add_keeps_every_byte_is_idempotent_and_remove_restores(original: str) -> None:
    added = cfg.add_runtime(original, ENTRY)
    assert added.changed
    new_lines = only_insertions(original, added.text)
    assert any("runtime_type" in line for line in new_lines)
    table = cfg.find_runtime(tomlkit.parse(added.text), "wasmtime")
    assert table is not None
    assert table["runtime_type"] == "io.containerd.wasmtime.v1"
    assert list(table["pod_annotations"]) == list(cfg.WASM_POD_ANNOTATIONS)

    again = cfg.add_runtime(added.text, ENTRY)
    assert not again.changed
    assert again.text == added.text

    removed = cfg.remove_runtime(added.text, "wasmtime")
    assert removed.changed
    assert removed.text == original


def test_other_runtimes_and_settings_are_untouched() -> None:
    doc = tomlkit.parse(cfg.add_runtime(V2_WITH_COMMENTS, ENTRY).text)
    assert cfg.registered_runtimes(doc) == {
        "runc": "io.containerd.runc.v2",
        "crun": "io.containerd.runc.v2",
        "wasmtime": "io.containerd.wasmtime.v1",
    }
    assert doc["root"] == "/var/lib/containerd"


def test_section_follows_the_version() -> None:
    v3 = tomlkit.parse(cfg.add_runtime(V3, ENTRY).text)
    assert "wasmtime" in v3["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    assert "io.containerd.grpc.v1.cri" not in v3["plugins"]
    v2 = tomlkit.parse(cfg.add_runtime("version = 2\n", ENTRY).text)
    assert "wasmtime" in v2["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    v1 = tomlkit.parse(cfg.add_runtime("", ENTRY).text)
    assert "wasmtime" in v1["plugins"]["cri"]["containerd"]["runtimes"]
    assert (
        cfg.section_name(3, "w") == "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.w"
    )


def test_malformed_config_names_the_line() -> None:
    bad = "version = 2\n\n[plugins\nfoo = 1\n"
    with pytest.raises(InvalidArgument, match=r"config.toml:3:"):
        cfg.add_runtime(bad, ENTRY)


@pytest.mark.parametrize("version", ["version = 4\n", "version = 'two'\n", "version = true\n"])
def test_unknown_version_is_refused(version: str) -> None:
    with pytest.raises(InvalidArgument, match="version"):
        cfg.add_runtime(version, ENTRY)


def test_duplicate_table_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        cfg.add_runtime("version = 2\n[grpc]\n[grpc]\n", ENTRY)


def test_a_different_registration_needs_force() -> None:
    mine = cfg.add_runtime(V2_WITH_COMMENTS, cfg.RuntimeEntry()).text
    other = cfg.RuntimeEntry(runtime_path="/opt/bin/containerd-shim-wasmtime-v1")
    with pytest.raises(AlreadyExists, match="--force"):
        cfg.add_runtime(mine, other)
    forced = cfg.add_runtime(mine, other, force=True)
    assert forced.changed
    only_insertions(mine, forced.text)
    table = cfg.find_runtime(tomlkit.parse(forced.text), "wasmtime")
    assert table is not None and table["runtime_path"] == "/opt/bin/containerd-shim-wasmtime-v1"


def test_template_lines_survive_verbatim() -> None:
    tmpl = '{{ template "base" . }}\n\n[plugins."x"]\n  enable = {{ .NodeConfig.SELinux }}\n'
    with pytest.raises(InvalidArgument):
        cfg.parse(tmpl)
    added = cfg.add_runtime(tmpl, ENTRY, template=True)
    only_insertions(tmpl, added.text)
    assert '{{ template "base" . }}\n' in added.text
    assert cfg.remove_runtime(added.text, "wasmtime", template=True).text == tmpl


def test_remove_when_absent_changes_nothing() -> None:
    edit = cfg.remove_runtime(V2_WITH_COMMENTS, "wasmtime")
    assert not edit.changed and edit.text == V2_WITH_COMMENTS


@pytest.mark.parametrize("handler", ["", "a.b", "a b", 'q"'])
def test_bad_handler(handler: str) -> None:
    with pytest.raises(InvalidArgument):
        cfg.RuntimeEntry(handler=handler)


def test_minimal_config_is_loadable_toml() -> None:
    for version in (2, 3):
        assert tomlkit.parse(cfg.minimal_config(version))["version"] == version
