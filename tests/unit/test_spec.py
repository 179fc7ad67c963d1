"""config.json parsing, the grouping rule, and mount option parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shim.errors import InvalidArgument, NotFound
from shim.oci import mounts, spec

# mount(2) flags, from <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x1000, 0x4000, 0x40000

CTR_LIKE = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
        "args": ["/app.wasm", "a b", "c"],
        "env": ["PATH=/usr/bin:/bin", "A=1", "A=2"],
        "cwd": "/work",
        "terminal": False,
    },
    "root": {"path": "rootfs"},
    "hostname": "h",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]},
        {"destination": "/rw", "type": "none", "source": "/srv2", "options": ["rbind", "ro", "rw"]},
    ],
    "annotations": {"io.kubernetes.cri.sandbox-id": "pod1"},
    "linux": {
        "cgroupsPath": "/default/c1",
        "resources": {"memory": {"limit": 1048576}},
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}],
    },
}


def test_parse_ctr_like_spec() -> None:
    s = spec.parse(CTR_LIKE)
    assert s.process.args == ("/app.wasm", "a b", "c")
    assert s.process.getenv("A") == "2"
    assert s.process.getenv("PATH") == "/usr/bin:/bin"
    assert s.process.getenv("NOPE") is None
    assert s.process.cwd == "/work"
    assert s.process.user.additional_gids == (10,)
    assert s.memory_limit == 1048576
    assert s.cgroups_path == "/default/c1"
    assert s.namespaces == (
        spec.Namespace("pid"),
        spec.Namespace("network", "/proc/1/ns/net"),
    )
    proc, data, rw = s.mounts
    assert not proc.is_bind
    assert data.is_bind and data.readonly
    assert rw.is_bind and not rw.readonly


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "process.args is empty"),
        ({"process": {"args": []}}, "process.args is empty"),
        ({"process": {"args": "x"}}, "process.args must be a list"),
        ({"process": {"args": ["x"]}, "mounts": [{"type": "bind"}]}, "destination"),
        ([], "must be an object"),
    ],
)
def test_malformed_spec_is_invalid_argument(doc: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec.parse(doc)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"config\.json does not exist"):
        spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(CTR_LIKE))
    assert spec.load(str(tmp_path)).hostname == "h"


def test_group_id_prefers_the_pod() -> None:
    assert spec.group_id({"io.kubernetes.cri.sandbox-id": "pod"}, "c") == "pod"
    assert (
        spec.group_id(
            {"io.containerd.runc.v2.group": "g", "io.kubernetes.cri.sandbox-id": "p"}, "c"
        )
        == "g"
    )
    assert spec.group_id({}, "c") == "c"


def test_mount_options() -> None:
    p = mounts.parse_mount_options(["ro", "rbind", "rprivate", "nosuid"])
    assert p.flags == MS_RDONLY | MS_BIND | MS_REC | MS_NOSUID
    assert p.propagation == MS_PRIVATE | MS_REC
    assert p.data == ""
    p = mounts.parse_mount_options(["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"])
    assert p.flags == 0
    assert p.data == "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b"
    assert mounts.parse_mount_options(["ro", "rw"]).flags & MS_RDONLY == 0


def test_getenv_last_assignment_wins_and_needs_the_equals_sign() -> None:
    env = ("PATH=/a", "PATHX=/x", "PATH", "PATH=/b", "EMPTY=")
    assert spec.getenv(env, "PATH") == "/b"
    assert spec.getenv(env, "EMPTY") == ""
    assert spec.getenv(env, "PATHX") == "/x"
    assert spec.getenv(env, "MISSING") is None
    assert spec.Process(args=("x",), env=env).getenv("PATH") == "/b"
