"""install/uninstall into a fake node root: exact reversal, idempotence, refusal before writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomlkit

from shim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from tests.unit.test_node_config import V2_WITH_COMMENTS, only_insertions
from wasmtime_shim.node import config as cfg
from wasmtime_shim.node import doctor, install
from wasmtime_shim.node.flavors import FLAVORS, flavor
from wasmtime_shim.node.restart import Restarter

SHIM = "containerd-shim-wasmtime-v1"
# From a DaemonSet pod (hostPID): run in PID 1's mount, uts, ipc, net and pid namespaces.
NSENTER = ("nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A stand-in for PyInstaller's onedir output: the binary beside _internal/."""
    d = tmp_path / "dist" / SHIM
    (d / "_internal").mkdir(parents=True)
    (d / "_internal" / "libpython.so").write_bytes(b"lib")
    (d / SHIM).write_text(
        "#!/bin/sh\nprintf 'containerd-shim-wasmtime-v1:\\n  Version:  test\\n"
        "  Runtime:  io.containerd.wasmtime.v1\\n'\n"
    )
    (d / SHIM).chmod(0o755)
    return d / SHIM


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "node"
    (r / "etc/containerd").mkdir(parents=True)
    return r


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def target(root: Path, **kw: object) -> install.Target:
    return install.Target(flavor=kw.pop("flavor", FLAVORS["containerd"]), root=root, **kw)  # type: ignore[arg-type]


def test_install_twice_then_uninstall_restores_bytes(root: Path, bundle: Path) -> None:
    config = root / "etc/containerd/config.toml"
    config.write_text(V2_WITH_COMMENTS)
    config.chmod(0o600)
    before = snapshot(root)

    lines = install.install(target(root), bundle)
    assert any("updated /etc/containerd/config.toml" in line for line in lines)
    only_insertions(V2_WITH_COMMENTS, config.read_text())
    assert config.stat().st_mode & 0o777 == 0o600
    link = root / "usr/local/bin" / SHIM
    assert os.readlink(link) == f"/usr/local/lib/containerd-shim-wasmtime/{SHIM}"
    assert (root / "usr/local/lib/containerd-shim-wasmtime/_internal/libpython.so").exists()
    assert os.readlink(root / "usr/local/bin/wasmtime-shim") == os.readlink(link)

    after_first = snapshot(root)
    second = install.install(target(root), bundle)
    assert all(line.startswith("kept") for line in second), second
    assert snapshot(root) == after_first

    install.uninstall(target(root))
    left = {k: v for k, v in snapshot(root).items()}
    assert left == before


def test_uninstall_after_a_later_edit_keeps_the_edit(root: Path, bundle: Path) -> None:
    config = root / "etc/containerd/config.toml"
    config.write_text(V2_WITH_COMMENTS)
    install.install(target(root), bundle)
    config.write_text(config.read_text() + "[debug]\n  level = 'debug'\n")
    install.uninstall(target(root))
    assert config.read_text() == V2_WITH_COMMENTS + "[debug]\n  level = 'debug'\n"
    assert not (root / "etc/containerd/config.toml.wasmtime-shim.bak").exists()


def test_malformed_config_writes_nothing(root: Path, bundle: Path) -> None:
    config = root / "etc/containerd/config.toml"
    config.write_text("version = 2\n[plugins.\n")
    before = snapshot(root)
    with pytest.raises(InvalidArgument, match=r"/etc/containerd/config.toml:2:"):
        install.install(target(root), bundle)
    assert snapshot(root) == before


def test_missing_config_is_created_then_deleted(root: Path, bundle: Path) -> None:
    t = target(root, config_version=3)
    install.install(t, bundle)
    doc = tomlkit.parse((root / "etc/containerd/config.toml").read_text())
    assert doc["version"] == 3
    assert cfg.registered_runtimes(doc)["wasmtime"] == "io.containerd.wasmtime.v1"
    install.uninstall(t)
    assert not (root / "etc/containerd/config.toml").exists()


def test_k0s_drop_in_is_a_file_of_our_own(root: Path, bundle: Path) -> None:
    t = target(root, flavor=flavor("k0s"))
    install.install(t, bundle)
    drop_in = root / "etc/k0s/containerd.d/wasmtime-shim.toml"
    assert cfg.registered_runtimes(tomlkit.parse(drop_in.read_text())) == {
        "wasmtime": "io.containerd.wasmtime.v1"
    }
    install.uninstall(t)
    assert not drop_in.exists()


def test_k3s_template_we_create_keeps_base(root: Path, bundle: Path) -> None:
    """Without a template, ours renders k3s's own config ("base") and adds our table; the
    generated file (k3s's output) is not ours to edit."""
    k3s = flavor("k3s")
    generated = root / k3s.generated.lstrip("/")  # type: ignore[union-attr]
    generated.parent.mkdir(parents=True)
    generated.write_text(V2_WITH_COMMENTS)
    install.install(target(root, flavor=k3s), bundle)
    tmpl = root / k3s.config.lstrip("/")
    text = tmpl.read_text()
    assert '{{ template "base" . }}\n' in text.splitlines(True)
    assert "[grpc]" not in text  # nothing of the generated file is frozen into the template
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]' in text
    assert generated.read_text() == V2_WITH_COMMENTS
    install.uninstall(target(root, flavor=k3s))
    assert not tmpl.exists()


def test_k3s_template_follows_the_base_version(root: Path, bundle: Path) -> None:
    """k3s on containerd 2.x generates a version 3 config: our table goes where 2.x reads."""
    k3s = flavor("k3s")
    generated = root / k3s.generated.lstrip("/")  # type: ignore[union-attr]
    generated.parent.mkdir(parents=True)
    generated.write_text("version = 3\n")
    install.install(target(root, flavor=k3s), bundle)
    text = (root / k3s.config.lstrip("/")).read_text()
    assert '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wasmtime]' in text


K3S_DETECTED = (
    'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes."wasmtime"]\n'
    '  runtime_type = "{}"\n'
)


def test_k3s_own_registration_is_left_alone(root: Path, bundle: Path) -> None:
    k3s = flavor("k3s")
    generated = root / k3s.generated.lstrip("/")  # type: ignore[union-attr]
    generated.parent.mkdir(parents=True)
    generated.write_text(K3S_DETECTED.format("io.containerd.wasmtime.v1"))
    lines = install.install(target(root, flavor=k3s), bundle)
    assert "registers runtimes.wasmtime ('io.containerd.wasmtime.v1') itself" in lines[-1]
    assert not (root / k3s.config.lstrip("/")).exists()
    # a different runtime under our handler (a later k3s registers .v2): refused, not doubled
    generated.write_text(K3S_DETECTED.format("io.containerd.wasmtime.v2"))
    with pytest.raises(AlreadyExists, match="pass --handler"):
        install.install(target(root, flavor=k3s), bundle)
    assert not (root / k3s.config.lstrip("/")).exists()


def test_our_template_is_not_mistaken_for_k3s_detection(root: Path, bundle: Path) -> None:
    """Once k3s rendered our template, the generated file holds our table: still ours."""
    k3s = flavor("k3s")
    install.install(target(root, flavor=k3s), bundle)
    generated = root / k3s.generated.lstrip("/")  # type: ignore[union-attr]
    generated.write_text(K3S_DETECTED.format("io.containerd.wasmtime.v1"))
    lines = install.install(target(root, flavor=k3s), bundle)
    assert lines[-1].startswith("kept [plugins"), lines


@pytest.mark.parametrize("bin_dir", ["/usr/bin", "/usr/sbin/", "/opt/kwasm/bin"])
def test_k3s_detection_dirs_are_refused(root: Path, bundle: Path, bin_dir: str) -> None:
    before = snapshot(root)
    with pytest.raises(InvalidArgument, match="registers every containerd-shim-wasmtime-v1"):
        install.install(target(root, flavor=flavor("rke2"), bin_dir=bin_dir), bundle)
    assert snapshot(root) == before


def test_onefile_binary_is_copied(root: Path, tmp_path: Path) -> None:
    single = tmp_path / "one" / SHIM
    single.parent.mkdir()
    single.write_bytes(b"\x7fELF fake")
    (root / "etc/containerd/config.toml").write_text("version = 2\n")
    t = target(root, bin_dir="/bin")
    install.install(t, single)
    assert (root / "bin" / SHIM).read_bytes() == b"\x7fELF fake"
    assert os.access(root / "bin" / SHIM, os.X_OK)
    install.uninstall(t)
    assert not (root / "bin" / SHIM).exists()
    assert (root / "etc/containerd/config.toml").read_text() == "version = 2\n"


def test_not_frozen_without_binary_is_refused(root: Path) -> None:
    with pytest.raises(InvalidArgument, match="--binary"):
        install.install(target(root), None)


def test_doctor_sees_the_installed_runtime(root: Path, bundle: Path) -> None:
    (root / "etc/containerd/config.toml").write_text(V2_WITH_COMMENTS)
    node = doctor.Node(FLAVORS["containerd"], root, "/etc/containerd/config.toml", "wasmtime")
    before = {c.name: c for c in doctor.diagnose(node)}
    assert before["shim binary"].status is doctor.Status.FAIL
    assert "fix: wasmtime-shim install" in before["shim binary"].line()
    assert before["config"].status is doctor.Status.FAIL
    install.install(target(root), bundle)
    after = {c.name: c for c in doctor.diagnose(node)}
    assert after["shim binary"].status is doctor.Status.OK, after["shim binary"].line()
    assert after["config"].status is doctor.Status.OK
    assert after["wasmtime"].status is doctor.Status.OK


# ------------------------------------------------------------------ restart


class FakeHost:
    """Answers commands from a table; records what was run."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        self.answers = answers
        self.ran: list[list[str]] = []

    def __call__(self, cmd: object) -> tuple[int, str]:
        args = list(cmd)  # type: ignore[call-overload]
        self.ran.append(args)
        for key, codes in self.answers.items():
            if key in " ".join(args) + " ":
                return (codes.pop(0) if len(codes) > 1 else codes[0]), "out"
        return 0, "containerd-shim-wasmtime-v1 Version: x"


def systemd_root(tmp_path: Path) -> Path:
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    return tmp_path


def test_restart_from_the_daemonset_enters_the_host(tmp_path: Path) -> None:
    host = FakeHost({"is-active --quiet k3s-agent": [0], "is-active --quiet k3s ": [3]})
    r = Restarter(flavor("k3s"), systemd_root(tmp_path), "/usr/local/bin/x", host, lambda s: None)
    lines = r.restart()
    assert host.ran[2][len(NSENTER) :] == ["systemctl", "restart", "k3s-agent"]
    assert all(cmd[: len(NSENTER)] == list(NSENTER) for cmd in host.ran)
    assert lines[0] == "restarted k3s-agent"
    assert any(
        c[len(NSENTER) :][:3] == ["ctr", "--address", "/run/k3s/containerd/containerd.sock"]
        for c in host.ran
    )


def test_restart_waits_until_containerd_answers(tmp_path: Path) -> None:
    host = FakeHost({"version": [1, 1, 0]})
    naps: list[float] = []
    r = Restarter(flavor("containerd"), systemd_root(tmp_path), "/b/x", host, naps.append)
    r.restart()
    assert len(naps) == 2
    assert host.ran[-1] == [*NSENTER, "/b/x", "-v"]


def test_restart_reports_a_containerd_that_does_not_come_back(tmp_path: Path) -> None:
    host = FakeHost({"ctr": [1]})
    r = Restarter(
        flavor("containerd"), systemd_root(tmp_path), "/b/x", host, lambda s: None, timeout=0
    )
    with pytest.raises(Unavailable, match="did not answer"):
        r.restart()


def test_restart_without_systemd_says_what_to_do(tmp_path: Path) -> None:
    r = Restarter(flavor("containerd"), tmp_path, "/b/x", FakeHost({}), lambda s: None)
    with pytest.raises(FailedPrecondition, match="restart containerd yourself"):
        r.restart()


def test_commands_on_the_node_itself_have_no_nsenter() -> None:
    r = Restarter(flavor("containerd"), Path("/"), "/b/x", FakeHost({}))
    assert r.command("systemctl", "restart", "containerd") == ["systemctl", "restart", "containerd"]


def test_k3s_template_with_base_gets_the_v2_section(root: Path, bundle: Path) -> None:
    k3s = flavor("k3s")
    tmpl = root / k3s.config.lstrip("/")
    tmpl.parent.mkdir(parents=True)
    original = '{{ template "base" . }}\n\n[plugins."x"]\n  y = 1\n'
    tmpl.write_text(original)
    install.install(target(root, flavor=k3s), bundle)
    text = tmpl.read_text()
    only_insertions(original, text)
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]' in text
    install.uninstall(target(root, flavor=k3s))
    assert tmpl.read_text() == original


def test_uninstall_stops_the_warm_runtime_of_the_removed_binary_only(tmp_path: Path) -> None:
    """Stand-ins: `sleep` copied into an "installed" directory, and the system's own `sleep`;
    each records its pid in a control directory as a warm runtime does."""
    import shutil
    import subprocess

    lib = tmp_path / "lib"
    lib.mkdir()
    ours = lib / "containerd-shim-wasmtime-v1"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", ours)
    link = tmp_path / "bin" / "containerd-shim-wasmtime-v1"
    link.parent.mkdir()
    link.symlink_to(ours)
    control = tmp_path / "warm"
    control.mkdir()
    mine = subprocess.Popen([str(link), "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        (control / "0000aaaa.pid").write_text(str(mine.pid))
        (control / "0000bbbb.pid").write_text(str(other.pid))
        (control / "0000cccc.pid").write_text("not a pid")
        done = install.retire_warm_runtimes([link, lib], str(control))
        assert done == [f"stopped the warm runtime {mine.pid} ({ours})"]
        assert mine.wait(10) == -15
        assert other.poll() is None
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


# ------------------------------------------------------------------ restart only on change


class CountingRestarter:
    """Stands in for Restarter in the command: counts restarts instead of running systemctl."""

    count = 0

    def __init__(self, *args: object) -> None:
        pass

    def restart(self) -> list[str]:
        CountingRestarter.count += 1
        return ["restarted containerd (fake)"]


def test_restart_only_when_the_config_changed(
    root: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wasmtime_shim.main import main
    from wasmtime_shim.node import commands

    monkeypatch.setattr(commands, "Restarter", CountingRestarter)
    CountingRestarter.count = 0
    (root / "etc/containerd/config.toml").write_text(V2_WITH_COMMENTS)
    args = ["--root", str(root), "--binary", str(bundle)]
    # without --restart: it says a restart is needed, and remembers it
    assert main(["install", *args]) == 0
    assert "changed: restart containerd to load it" in capsys.readouterr().out
    assert install.restart_pending(target(root))
    assert main(["install", *args, "--restart"]) == 0  # unchanged now, but still pending
    assert CountingRestarter.count == 1
    assert "restarting containerd" in capsys.readouterr().out
    assert not install.restart_pending(target(root))
    assert main(["install", *args, "--restart"]) == 0  # a DaemonSet pod starting again
    out = capsys.readouterr().out
    assert CountingRestarter.count == 1
    assert "containerd not restarted: /etc/containerd/config.toml is unchanged" in out
    assert main(["uninstall", "--root", str(root), "--restart"]) == 0
    assert CountingRestarter.count == 2
    assert (root / "etc/containerd/config.toml").read_text() == V2_WITH_COMMENTS
    assert main(["uninstall", "--root", str(root), "--restart"]) == 0
    assert CountingRestarter.count == 2


def test_doctor_fails_when_the_binary_cannot_start(
    root: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wasmtime_shim.main import main

    (root / "etc/containerd/config.toml").write_text(V2_WITH_COMMENTS)
    install.install(target(root), bundle)
    node = doctor.Node(FLAVORS["containerd"], root, "/etc/containerd/config.toml", "wasmtime")
    assert doctor.check_loads(node).status is doctor.Status.OK
    installed = root / "usr/local/lib/containerd-shim-wasmtime" / SHIM
    installed.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    check = doctor.check_loads(node)
    assert check.status is doctor.Status.FAIL
    assert "exited 127: error while loading shared libraries" in check.detail
    assert main(["doctor", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAIL shim starts" in out
    assert f"/run/containerd/containerd.sock (under {root})" in out  # the socket is named
