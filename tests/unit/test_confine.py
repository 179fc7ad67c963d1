"""shim/confine/: what Create refuses, what crosses to the spawner, and (as root, in forked
children) what the kernel then enforces: mounts after the pivot, identity and capabilities,
and a seccomp filter built by libseccomp."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from shim.confine import privileges, rootfs, seccomp
from shim.confine.policy import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    PID_NEW,
    Confinement,
    ContainerMount,
    Filesystem,
    confinement,
    container_mount,
    namespaces,
)
from shim.errors import InvalidArgument
from shim.oci.spec import Mount, parse
from tests.conftest import in_child
from tests.prereq import needs

ROOT = os.geteuid() == 0


# ------------------------------------------------------------------ decided at Create


def test_an_unknown_mount_type_is_refused_naming_the_mount() -> None:
    with pytest.raises(InvalidArgument, match=r"mount /nfs: type 'nfs' is not supported"):
        container_mount(Mount("/nfs", "nfs", "server:/x", ()))


def test_a_bind_of_a_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"bind source .* does not exist"):
        container_mount(Mount("/data", "bind", str(tmp_path / "nope"), ("rbind",)))
    with pytest.raises(InvalidArgument, match="bind source"):
        container_mount(Mount("/data", "none", "", ("bind",)))


def test_mount_destinations_are_normalised_and_root_is_refused(tmp_path: Path) -> None:
    m = container_mount(Mount("data//./x/", "none", str(tmp_path), ("rbind", "ro")))
    assert m == ContainerMount("/data/x", "bind", str(tmp_path), ("rbind", "ro"))
    with pytest.raises(InvalidArgument, match="over the container's root"):
        container_mount(Mount("/a/..", "tmpfs", "tmpfs", ()))


def test_namespaces_split_into_unshare_join_and_pid() -> None:
    flags, join, pid = namespaces(
        (("network", "/proc/1/ns/net"), ("uts", ""), ("pid", ""), ("mount", ""), ("ipc", "/x"))
    )
    assert flags == CLONE_NEWNS | CLONE_NEWUTS
    assert join == (("net", "/proc/1/ns/net"), ("ipc", "/x"))
    assert pid == PID_NEW
    assert namespaces((("network", ""), ("pid", "/p")))[0] & CLONE_NEWNET
    assert namespaces((("pid", "/p"),))[2] == "/p"
    for bad in (("user", ""), ("time", ""), ("mount", "/proc/1/ns/mnt")):
        with pytest.raises(InvalidArgument):
            namespaces((bad,))


def _spec(tmp_path: Path, **process: object) -> dict[str, object]:
    return {
        "process": {"args": ["/x.wasm"], "cwd": "/work", **process},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": str(tmp_path), "options": ["ro"]},
        ],
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "pid"}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
        },
    }


def test_a_spec_becomes_plain_values_that_survive_the_wire(tmp_path: Path) -> None:
    doc = _spec(
        tmp_path,
        user={"uid": 1000, "gid": 1000, "additionalGids": [5]},
        capabilities={"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"]},
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
        noNewPrivileges=True,
        oomScoreAdj=500,
    )
    conf, join = confinement(parse(doc), "/rootfs", (("memory", "/sys/fs/cgroup/memory/x"),))
    assert join == ()
    assert conf.pid == PID_NEW and conf.cwd == "/work"
    p = conf.privileges
    assert (p.uid, p.gid, p.additional_gids) == (1000, 1000, (5,))
    assert p.capabilities.bounding == (1 << 0) | (1 << 5)
    assert p.capabilities.effective == 1 << 5 and p.capabilities.permitted == 0
    assert p.rlimits == ((7, 100, 200),) and p.no_new_privileges and p.oom_score_adj == 500
    assert conf.filesystem.masked_paths == ("/proc/kcore",)
    assert conf.filesystem.devices[0].path == "/dev/fuse"
    again = Confinement.from_wire(json.loads(json.dumps(conf.to_wire())))
    assert again == conf


@pytest.mark.parametrize(
    ("process", "message"),
    [
        ({"capabilities": {"effective": ["CAP_NOPE"]}}, "unknown capability 'CAP_NOPE'"),
        ({"rlimits": [{"type": "RLIMIT_X", "soft": 1, "hard": 1}]}, "unknown type"),
        ({"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 1}]}, "soft 9 > hard 1"),
    ],
)
def test_what_cannot_be_honoured_fails_create(
    tmp_path: Path, process: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        confinement(parse(_spec(tmp_path, **process)), "/rootfs", ())


# ------------------------------------------------------------------ seccomp


def _profile(**extra: object) -> dict[str, object]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},  # the default: skipped
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 255, "op": "SCMP_CMP_EQ"}],
            },
        ],
        **extra,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "unknown action"),
        ({"architectures": ["SCMP_ARCH_Z80"]}, "unknown architecture"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "index"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}, "op"),
        ({"listenerPath": "/run/agent.sock"}, "listenerPath"),
        ({"flags": ["SECCOMP_FILTER_FLAG_NEW"]}, "flag"),
    ],
)  # fmt: skip
def test_a_bad_profile_is_refused_with_the_reason(extra: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        seccomp.check(_profile(**extra))


def test_a_good_profile_compiles() -> None:
    seccomp.check(_profile(flags=["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]))


def test_the_loaded_filter_is_the_kernels(tmp_path: Path) -> None:
    def body() -> None:
        seccomp.Filter(_profile()).load()
        try:
            os.mkdir(tmp_path / "blocked")
        except PermissionError as e:
            assert e.errno == errno.EACCES
        else:
            raise AssertionError("mkdir was allowed")
        assert os.getpid() > 0
        status = Path("/proc/self/status").read_text()
        assert "\nSeccomp:\t2\n" in status, status

    assert in_child(body) == 0
    assert not (tmp_path / "blocked").exists()


# ------------------------------------------------------------------ identity


@needs(ROOT, "changing uid and capabilities needs root")
def test_drop_leaves_exactly_the_spec_s_identity_and_capabilities() -> None:
    caps = privileges.capabilities_from_spec(
        {
            "bounding": ["CAP_CHOWN", "CAP_KILL"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
        }
    )
    p = privileges.Privileges(
        uid=65534, gid=65534, additional_gids=(5,), capabilities=caps, no_new_privileges=True
    )

    def body() -> None:
        privileges.drop(p)
        fields = dict(
            line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        assert fields["Uid"].split()[:2] == ["65534", "65534"], fields["Uid"]
        assert fields["Groups"].split() == ["5"], fields["Groups"]
        assert int(fields["CapEff"], 16) == 1 << 5
        assert int(fields["CapPrm"], 16) == (1 << 5) | 1
        assert int(fields["CapBnd"], 16) == (1 << 5) | 1
        assert fields["NoNewPrivs"].strip() == "1"

    assert in_child(body) == 0


# ------------------------------------------------------------------ the pivot


@needs(ROOT, "mount namespaces need root")
def test_a_nested_read_only_mount_holds_after_the_pivot(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("image\n")
    data = tmp_path / "data"
    (data / "ro").mkdir(parents=True)
    (data / "ro" / "file").write_text("original\n")
    single = tmp_path / "single.conf"
    single.write_text("conf\n")
    fs = Filesystem(
        rootfs=str(root),
        mounts=(
            ContainerMount("/data", "bind", str(data), ("rbind", "rw")),
            ContainerMount("/data/ro", "bind", str(data / "ro"), ("rbind", "ro")),
            ContainerMount("/etc/app.conf", "bind", str(single), ("bind", "ro")),
            ContainerMount("/dev", "tmpfs", "tmpfs", ("mode=755",)),
            ContainerMount("/proc", "proc", "proc", ()),
        ),
        dev_is_tmpfs=True,
        masked_paths=("/proc/version", "/proc/acpi", "/etc/missing"),
        readonly_paths=("/proc/sys",),
    )

    def body() -> None:
        from shim import libc

        libc.unshare(CLONE_NEWNS)
        rootfs.enter(fs, rootfs.stage(fs))
        assert os.getcwd() == "/"
        assert Path("/etc/motd").read_text() == "image\n"
        assert Path("/etc/app.conf").read_text() == "conf\n"
        assert not Path(str(tmp_path)).exists()  # nothing of the host's tree is left
        for spelling in ("/data/ro/file", "/data/./ro/file", "/data//ro/file", "/data/ro/../ro/f"):
            try:
                with open(spelling, "w") as f:
                    f.write("x")
            except OSError as e:
                assert e.errno == errno.EROFS, (spelling, e)
            else:
                raise AssertionError(f"{spelling} was writable")
        try:
            os.link("/data/ro/file", "/data/hard")
        except OSError as e:
            assert e.errno == errno.EXDEV
        Path("/data/out").write_text("fine\n")
        assert Path("/dev/null").is_char_device() and os.readlink("/dev/fd") == "/proc/self/fd"
        assert Path("/proc/version").read_bytes() == b""
        if Path("/proc/acpi").exists():
            assert os.listdir("/proc/acpi") == []
        try:
            Path("/proc/sys/kernel/hostname").write_text("x")
        except OSError as e:
            assert e.errno == errno.EROFS
        else:
            raise AssertionError("/proc/sys was writable")

    assert in_child(body) == 0
    assert (data / "ro" / "file").read_text() == "original\n"
    assert (data / "out").read_text() == "fine\n"
    assert sorted(os.listdir(data)) == ["out", "ro"]


@pytest.mark.parametrize(
    ("syscall", "message"),
    [
        ({"names": "ptrace", "action": "SCMP_ACT_ERRNO"}, "names must be a list"),
        ({"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 0, "value": 2**70, "op": "SCMP_CMP_EQ"}]}, "64-bit"),
        ({"names": ["read"], "action": "SCMP_ACT_TRACE", "errnoRet": "x"}, "trace message"),
    ],
)  # fmt: skip
def test_a_malformed_syscall_entry_is_refused_not_weakened(
    syscall: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        seccomp.check(_profile(syscalls=[syscall]))


def test_a_device_number_out_of_range_fails_create(tmp_path: Path) -> None:
    doc = _spec(tmp_path)
    doc["linux"]["devices"] = [{"path": "/dev/x", "type": "c", "major": 2**40, "minor": 1}]  # type: ignore[index]
    with pytest.raises(InvalidArgument, match="out of range"):
        confinement(parse(doc), "/rootfs", ())
