"""Issue 10: every wasm guest is confined as a container, by the kernel (shim/confine/).

Through the real ``ctr`` and containerd: the spec's mounts really mounted in a mount
namespace of the guest's own, with the rootfs as its ``/`` (so a read-only mount nested in a
read-write one stays read-only whatever the path's spelling); file binds, tmpfs and a missing
bind source as runc treats them; and the guest process's capabilities, no_new_privs, seccomp
mode, rlimits and namespaces as /proc shows them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from shim.api.k8s.cri.v1 import api_pb2 as cri
from tests.containerd import WASMTIME_HANDLER, PrivateContainerd
from tests.cri import CriClient
from tests.e2e.helpers import (
    TestImage,
    container_spec,
    ctr_run,
    describe,
    make_image,
    new_id,
    remove_container,
    task_pid,
    tool_files,
    wait_for_status,
)
from wasmtime_shim.images.build import ImageConfig, Symlink


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    files = tool_files("/bin") | {
        "/etc/motd": b"from the image\n",
        # links a hostile image may hold, to lead mount points out of its root
        "/via-fd": Symlink("/proc/self/fd/4"),  # a staged bind source's descriptor
        "/via-host": Symlink("/proc/2/root/tmp"),  # kthreadd's root: the host's /
    }
    return make_image(
        tmp_path_factory.mktemp("confine"),
        files,
        ref="example.com/e2e/confine:latest",
        config=ImageConfig(env=("PATH=/bin",)),
    )


@pytest.fixture
def ref(bed: PrivateContainerd, bed_ns: str, image: TestImage) -> str:
    """The image in `bed`: each test runs on the venv's shim and on the shipped bundle."""
    return image.import_into(bed, bed_ns)


def mount(src: Path | str, dst: str, options: str, type_: str = "bind") -> tuple[str, str]:
    return ("--mount", f"type={type_},src={src},dst={dst},options={options}")


# ------------------------------------------------------------------ a ro mount inside a rw one


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """/data (rw) holding ro/, which is mounted again, read-only, at /data/ro."""
    data = tmp_path / "data"
    (data / "ro").mkdir(parents=True)
    (data / "ro" / "file").write_text("original\n")
    return data


NESTED_WRITES = [
    pytest.param(["write", "/data/ro/file", "x"], id="plain"),
    pytest.param(["write", "/data/./ro/file", "x"], id="dot"),
    pytest.param(["write", "/data//ro/file", "x"], id="double-slash"),
    pytest.param(["write", "/data/ro/../ro/file", "x"], id="dotdot"),
    pytest.param(["write", "/data/ro/new", "x"], id="create"),
    pytest.param(["append", "/data/./ro//file", "x"], id="append"),
    pytest.param(["rm", "/data/./ro/file"], id="unlink"),
    pytest.param(["rename", "/data/ro/file", "/data/moved"], id="rename-out"),
    pytest.param(["link", "/data/ro/file", "/data/hardlink"], id="hard-link"),
]


@pytest.mark.parametrize("argv", NESTED_WRITES)
def test_no_spelling_writes_through_a_nested_read_only_mount(
    bed: PrivateContainerd, bed_ns: str, ref: str, nested: Path, argv: list[str]
) -> None:
    containerd, ns = bed, bed_ns
    flags = (*mount(nested, "/data", "rbind:rw"), *mount(nested / "ro", "/data/ro", "rbind:ro"))
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", *argv, flags=flags)
    # EROFS or EXDEV from the kernel; wasmtime's WASI reports EROFS as an I/O error
    assert run.returncode == 1, describe(containerd, run)
    assert run.stderr.startswith(f"files: {argv[0]} "), describe(containerd, run)
    assert (nested / "ro" / "file").read_text() == "original\n"
    assert sorted(p.name for p in (nested / "ro").iterdir()) == ["file"]
    assert sorted(p.name for p in nested.iterdir()) == ["ro"]


def test_symlinks_do_not_lead_around_a_read_only_mount(
    bed: PrivateContainerd, bed_ns: str, ref: str, nested: Path
) -> None:
    """A link the guest makes in the rw part, however it climbs, still ends in the ro mount:
    the kernel resolves it inside the container's root. (WASI refuses absolute targets.)"""
    containerd, ns = bed, bed_ns
    flags = (*mount(nested, "/data", "rbind:rw"), *mount(nested / "ro", "/data/ro", "rbind:ro"))

    def files(*argv: str) -> subprocess.CompletedProcess[str]:
        return ctr_run(containerd, ns, ref, "/bin/files.wasm", *argv, flags=flags)

    for link, target in (("/data/rel", "ro"), ("/data/up", "../data/./ro")):
        made = files("symlink", target, link)
        assert made.returncode == 0, describe(containerd, made)
        run = files("write", f"{link}/file", "x")
        assert run.returncode == 1, describe(containerd, run)
    assert (nested / "ro" / "file").read_text() == "original\n"
    assert os.readlink(nested / "rel") == "ro"


def test_the_rw_part_around_a_nested_ro_mount_stays_writable(
    bed: PrivateContainerd, bed_ns: str, ref: str, nested: Path
) -> None:
    containerd, ns = bed, bed_ns
    flags = (*mount(nested, "/data", "rbind:rw"), *mount(nested / "ro", "/data/ro", "rbind:ro"))
    run = ctr_run(
        containerd, ns, ref, "/bin/files.wasm", "write", "/data/out", "fine\n", flags=flags
    )
    assert run.returncode == 0, describe(containerd, run)
    assert (nested / "out").read_text() == "fine\n"
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/data/ro/file", flags=flags)
    assert (run.returncode, run.stdout) == (0, "original\n"), describe(containerd, run)


# ------------------------------------------------------------------ other kinds of mount


def test_a_file_bind_mount_is_that_file(
    bed: PrivateContainerd, bed_ns: str, ref: str, tmp_path: Path
) -> None:
    containerd, ns = bed, bed_ns
    conf = tmp_path / "app.conf"
    conf.write_text("setting=1\n")
    flags = mount(conf, "/etc/app.conf", "rbind:ro")
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/etc/app.conf", flags=flags)
    assert (run.returncode, run.stdout) == (0, "setting=1\n"), describe(containerd, run)
    run = ctr_run(
        containerd, ns, ref, "/bin/files.wasm", "write", "/etc/app.conf", "x", flags=flags
    )
    assert run.returncode == 1, describe(containerd, run)
    assert conf.read_text() == "setting=1\n"
    # the image's own file beside it is still there
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/etc/motd", flags=flags)
    assert (run.returncode, run.stdout) == (0, "from the image\n"), describe(containerd, run)


def test_a_tmpfs_mount_hides_the_image_and_keeps_nothing(
    bed: PrivateContainerd, bed_ns: str, ref: str
) -> None:
    containerd, ns = bed, bed_ns
    flags = mount("tmpfs", "/etc", "size=1m", type_="tmpfs")
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/etc/motd", flags=flags)
    assert run.returncode == 1 and "No such file" in run.stderr, describe(containerd, run)
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "write", "/etc/scratch", "x", flags=flags)
    assert run.returncode == 0, describe(containerd, run)
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "list", "/etc", flags=flags)
    assert (run.returncode, run.stdout) == (0, ""), describe(containerd, run)


def test_a_bind_mount_of_a_missing_source_is_refused_and_nothing_is_written(
    bed: PrivateContainerd, bed_ns: str, ref: str, tmp_path: Path
) -> None:
    containerd, ns = bed, bed_ns
    missing = tmp_path / "not-there"
    flags = mount(missing, "/data", "rbind:rw")
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "write", "/data/lost", "x", flags=flags)
    assert run.returncode != 0, describe(containerd, run)
    assert f"bind source '{missing}' does not exist" in run.stderr, describe(containerd, run)
    assert not missing.exists()


def test_an_unsupported_mount_type_is_refused_naming_the_mount(
    bed: PrivateContainerd, bed_ns: str, ref: str
) -> None:
    containerd, ns = bed, bed_ns
    cgroup = f"/{ns}/refused-{os.getpid()}"
    flags = (*mount("server:/export", "/nfs", "rw", type_="nfs"), "--cgroup", cgroup)
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", flags=flags)
    assert run.returncode != 0, describe(containerd, run)
    assert "mount /nfs: type 'nfs' is not supported" in run.stderr, describe(containerd, run)
    # the cgroup Create made before it read the mounts is gone again, in every hierarchy
    left = [d for d in Path("/sys/fs/cgroup").glob(f"*{cgroup}") if d.exists()]
    left += [d for d in [Path("/sys/fs/cgroup" + cgroup)] if d.exists()]
    assert not left, left


def test_a_read_only_root_is_read_only(bed: PrivateContainerd, bed_ns: str, ref: str) -> None:
    containerd, ns = bed, bed_ns
    run = ctr_run(
        containerd, ns, ref, "/bin/files.wasm", "write", "/etc/new", "x", flags=("--read-only",)
    )
    assert run.returncode == 1 and run.stderr.startswith("files: write /etc/new: "), describe(
        containerd, run
    )


def test_a_mount_point_through_proc_self_fd_is_refused_and_nothing_is_written(
    bed: PrivateContainerd, bed_ns: str, ref: str, tmp_path: Path
) -> None:
    """A destination under an image link to /proc/self/fd/N would reach a staged source
    (here the read-only one): mount points resolve with /proc's magic links refused."""
    containerd, ns = bed, bed_ns
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    flags = (
        *mount("tmpfs", "/via-fd/made-by-the-shim", "rw", type_="tmpfs"),
        *mount(readonly, "/data", "rbind:ro"),
    )
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", flags=flags)
    assert run.returncode != 0, describe(containerd, run)
    assert "mount /via-fd/made-by-the-shim" in run.stderr, describe(containerd, run)
    assert list(readonly.iterdir()) == []


def test_a_mount_point_through_proc_pid_root_creates_nothing_on_the_host(
    bed: PrivateContainerd, bed_ns: str, ref: str, tmp_path: Path
) -> None:
    """In the host's PID namespace (hostPID), /proc/2/root is the host's /: a mount point
    under an image link to it must not be created there."""
    containerd, ns = bed, bed_ns
    name = f"made-by-the-shim-{os.getpid()}"
    src = tmp_path / "file"
    src.write_text("x")
    for kind, extra in (
        ("file", mount(src, f"/via-host/{name}", "rbind:ro")),
        ("tmpfs", mount("tmpfs", f"/via-host/{name}", "rw", type_="tmpfs")),
    ):
        flags = ("--with-ns", f"pid:/proc/{os.getpid()}/ns/pid", *extra)
        try:
            run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", flags=flags)
            assert run.returncode != 0, (kind, describe(containerd, run))
            assert not os.path.lexists(f"/tmp/{name}"), (kind, describe(containerd, run))
        finally:
            if os.path.isdir(f"/tmp/{name}"):
                os.rmdir(f"/tmp/{name}")
            elif os.path.lexists(f"/tmp/{name}"):
                os.unlink(f"/tmp/{name}")


# ------------------------------------------------------------------ the guest process


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _cap_mask(names: list[str]) -> int:
    from shim.confine.privileges import CAPABILITIES

    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def _nofile(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no 'Max open files' line")


def test_the_guest_process_is_confined_as_the_spec_says(
    bed: PrivateContainerd, bed_ns: str, ref: str
) -> None:
    """ctr's default spec with --seccomp and a dropped capability: the guest's /proc shows
    the spec's capability sets, no_new_privs, seccomp filter mode, the NOFILE rlimit, and
    namespaces (mount, pid, uts, ipc, net) other than the shim's."""
    containerd, ns = bed, bed_ns
    cid = new_id()
    flags = ("--seccomp", "--cap-drop", "CAP_NET_RAW")
    run = containerd.ctr(
        "run", "-d", "--runtime", "io.containerd.wasmtime.v1", *flags, ref, cid,
        "/bin/sleep.wasm", namespace=ns, check=False, timeout=60,
    )  # fmt: skip
    try:
        assert run.returncode == 0, describe(containerd, run)
        wait_for_status(containerd, ns, cid, "RUNNING")
        pid = task_pid(containerd, ns, cid)
        spec = container_spec(containerd, ns, cid)
        caps = spec["process"]["capabilities"]
        status = _status(pid)
        assert int(status["CapEff"], 16) == _cap_mask(caps["effective"]), status
        assert int(status["CapPrm"], 16) == _cap_mask(caps["permitted"]), status
        assert int(status["CapBnd"], 16) == _cap_mask(caps["bounding"]), status
        assert not int(status["CapEff"], 16) & _cap_mask(["CAP_NET_RAW", "CAP_SYS_ADMIN"])
        assert status["NoNewPrivs"] == ("1" if spec["process"].get("noNewPrivileges") else "0")
        assert status["Seccomp"] == "2", status
        nofile = next(r for r in spec["process"]["rlimits"] if r["type"] == "RLIMIT_NOFILE")
        assert _nofile(pid) == (str(nofile["soft"]), str(nofile["hard"]))
        # The guest is the init of its own PID namespace and has its own mount, UTS, IPC
        # and network namespaces (ctr's default spec lists them all without a path).
        assert status["NSpid"].split()[-1] == "1", status
        for kind in ("mnt", "pid", "uts", "ipc", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
        # its root is the container's rootfs, not the host's
        assert Path(f"/proc/{pid}/root/bin/files.wasm").is_file()
        assert not Path(f"/proc/{pid}/root{Path(__file__)}").exists()
        # SIGTERM ends it (a pid-namespace init would ignore it), with the signal's status
        containerd.ctr("task", "kill", "-s", "SIGTERM", cid, namespace=ns, timeout=20)
        wait_for_status(containerd, ns, cid, "STOPPED", timeout=20)
        table = containerd.ctr("task", "ls", namespace=ns, timeout=20).stdout
        assert cid in table
    finally:
        remove_container(containerd, ns, cid)


def test_sigterm_to_a_pid_namespace_init_reports_143(
    bed: PrivateContainerd, bed_ns: str, ref: str
) -> None:
    containerd, ns = bed, bed_ns
    cid = new_id()
    proc = subprocess.Popen(
        [str(containerd.ctr_bin), "--address", str(containerd.address), "--namespace", ns,
         "run", "--rm", "--runtime", "io.containerd.wasmtime.v1", ref, cid, "/bin/sleep.wasm"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_status(containerd, ns, cid, "RUNNING")
        pid = task_pid(containerd, ns, cid)
        assert _status(pid)["NSpid"].split()[-1] == "1"
        os.kill(proc.pid, 0)
        containerd.ctr("task", "kill", "-s", "SIGTERM", cid, namespace=ns, timeout=20)
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_container(containerd, ns, cid)


# ------------------------------------------------------------------ under a CRI spec


def test_a_cri_container_gets_the_default_cri_confinement(
    cri_bed: tuple[PrivateContainerd, CriClient], crictl: CriClient, cri_wasm_image: str
) -> None:
    """What kubelet asks for a restricted pod: RuntimeDefault seccomp, no_new_privs and an
    oom_score_adj. The guest's /proc shows them, containerd's default capability set, and a
    mount namespace of its own; its /proc is its PID namespace's."""
    pod = crictl.run_pod("confined", runtime_handler=WASMTIME_HANDLER)
    linux = cri.LinuxContainerConfig(
        resources=cri.LinuxContainerResources(oom_score_adj=777),
        security_context=cri.LinuxContainerSecurityContext(
            seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
            no_new_privs=True,
        ),
    )
    cid = crictl.create_container(
        pod, "sleeper", cri_wasm_image, command=["/bin/sleep.wasm"], linux=linux
    )
    crictl.start_container(cid)
    crictl.wait_for_log(cid, "sleeping 3600")
    pid = crictl.container_pid(cid)
    spec = crictl.container_info(cid)["runtimeSpec"]
    assert spec["linux"]["seccomp"]["defaultAction"], spec["linux"].get("seccomp")
    status = _status(pid)
    caps = spec["process"]["capabilities"]
    assert int(status["CapEff"], 16) == _cap_mask(caps["effective"]), status
    assert int(status["CapBnd"], 16) == _cap_mask(caps["bounding"]), status
    assert status["NoNewPrivs"] == "1", status
    assert status["Seccomp"] == "2", status
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "777"
    shim = crictl.sandbox_pid(pod.id)
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(f"/proc/{shim}/ns/mnt")
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    # masked paths from containerd's default spec are masked in the guest's /proc
    for masked in spec["linux"].get("maskedPaths", []):
        target = Path(f"/proc/{pid}/root{masked}")
        if target.is_file():
            assert target.read_bytes() == b"", masked
    crictl.stop_container(cid, timeout=5)
    assert crictl.wait_exited(cid).exit_code == 128 + signal.SIGTERM
    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)
