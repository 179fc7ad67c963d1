"""The cluster rollout, end to end on this machine: the installer image (built here by
packaging/node_images.py around the session's onedir bundle) runs natively under runc in a
private containerd against a fake node root bind-mounted at /host that holds a stock
`containerd config default`; a second containerd then starts on the config it installed and
runs the example wasm image through the shim it placed, found on PATH by the runtime's name;
a second installer start changes nothing and restarts nothing; the uninstall mode restores
the original bytes. Also: the bundle installs itself with no venv, doctor fails when the
bundle cannot start, and the README states the glibc floor the bundle really has.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import tomlkit

from tests.containerd import CONTAINERD, CRI_PLUGIN, CTR, RUNTIME, PrivateContainerd
from tests.e2e.helpers import new_id
from tests.prereq import require
from tests.unit.test_node_config import only_insertions
from wasmtime_shim.node import config as cfg
from wasmtime_shim.node import manifests

REPO = Path(__file__).resolve().parents[2]
SHIM = "containerd-shim-wasmtime-v1"
LIB = "usr/local/lib/containerd-shim-wasmtime"
INSTALLER = "localhost/test/installer:rollout"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_{name}", REPO / "packaging" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(frozen: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The installer image and the example images, written once for the module."""
    node_images = _script("node_images")
    out = tmp_path_factory.mktemp("images")
    paths = {"installer": node_images.installer_image(frozen, INSTALLER).write(out / "i.tar")}
    for name, image in node_images.example_images().items():
        paths[name.removesuffix(".tar")] = image.write(out / name)
    return paths


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A fake node root whose containerd config is Debian containerd's stock default."""
    require(CONTAINERD.exists() and CTR.exists(), "containerd and ctr are missing")
    root = tmp_path / "node"
    (root / "etc/containerd").mkdir(parents=True)
    out = subprocess.run(
        [str(CONTAINERD), "config", "default"], capture_output=True, check=True, timeout=60
    )
    (root / "etc/containerd/config.toml").write_bytes(out.stdout)
    return root


def installer(
    containerd: PrivateContainerd, ns: str, node: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The installer image run to completion (runc), the node root at /host. ctr's args
    replace the entrypoint too (Kubernetes' `args` keep it), so the tool is named here."""
    return containerd.ctr(
        "run",
        "--rm",
        "--mount",
        f"type=bind,src={node},dst=/host,options=rbind:rw",
        INSTALLER,
        new_id("inst"),
        "/opt/containerd-shim-wasmtime/wasmtime-shim",
        *args,
        namespace=ns,
        check=False,
        timeout=120,
    )


def installer_default(containerd: PrivateContainerd, ns: str, node: Path, log: Path) -> str:
    """The image's own command (install, then sleep), detached; returns its log once it
    sleeps, after stopping it with SIGTERM (which must end it with status 0)."""
    cid = new_id("inst")
    containerd.ctr(
        "run",
        "-d",
        "--log-uri",
        f"file://{log}",
        "--mount",
        f"type=bind,src={node},dst=/host,options=rbind:rw",
        INSTALLER,
        cid,
        namespace=ns,
        timeout=120,
    )
    try:
        deadline = time.monotonic() + 60
        while "sleeping until terminated" not in (text := _read(log)):
            assert time.monotonic() < deadline, text + containerd.log_tail()
            time.sleep(0.2)
        containerd.ctr("task", "kill", cid, namespace=ns)
        deadline = time.monotonic() + 30
        while "STOPPED" not in containerd.ctr("task", "ls", namespace=ns).stdout:
            assert time.monotonic() < deadline, "the installer ignored SIGTERM"
            time.sleep(0.2)
        status = containerd.ctr("task", "delete", cid, namespace=ns, check=False)
        assert "exit status 0" in status.stdout or status.returncode == 0, status
    finally:
        containerd.ctr("task", "delete", "--force", cid, namespace=ns, check=False)
        containerd.ctr("container", "delete", cid, namespace=ns, check=False)
    return text


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


class InstalledContainerd(PrivateContainerd):
    """A private containerd whose config is the node's installed one, with only the paths
    (root, state, sockets, opt) made private and CRI off: everything else as installed."""

    def __init__(self, installed: Path, shim: Path) -> None:
        super().__init__(shim=shim)
        self.installed = installed

    def config_toml(self) -> str:
        doc = tomlkit.parse(self.installed.read_text())
        doc["root"] = str(self.root)
        doc["state"] = str(self.state)
        doc["disabled_plugins"] = [CRI_PLUGIN]
        doc["grpc"]["address"] = str(self.address)  # type: ignore[index]
        doc["ttrpc"]["address"] = str(self.ttrpc_address)  # type: ignore[index]
        doc["metrics"]["address"] = ""  # type: ignore[index]
        doc["plugins"]["io.containerd.internal.v1.opt"]["path"] = str(self.base / "opt")  # type: ignore[index]
        return doc.as_string()


def test_installer_image_installs_restarts_only_on_change_and_uninstalls(
    containerd: PrivateContainerd, ns: str, images: dict[str, Path], node: Path, tmp_path: Path
) -> None:
    require(os.geteuid() == 0, "needs root to run containers")
    config = node / "etc/containerd/config.toml"
    original = config.read_bytes()
    containerd.import_image(images["installer"], namespace=ns)

    first = installer_default(containerd, ns, node, tmp_path / "first.log")
    assert "updated /etc/containerd/config.toml" in first, first
    assert "config.toml changed: restart containerd to load it" in first, first
    doc = tomlkit.parse(config.read_text())
    assert cfg.registered_runtimes(doc, 2)["wasmtime"] == RUNTIME
    only_insertions(original.decode(), config.read_text())  # every stock byte kept
    assert os.readlink(node / "usr/local/bin" / SHIM) == f"/{LIB}/{SHIM}"
    assert os.readlink(node / "usr/local/bin/wasmtime-shim") == f"/{LIB}/{SHIM}"
    assert (node / LIB / "_internal").is_dir()
    installed = config.read_bytes()

    second = installer(containerd, ns, node, "install", "--root", "/host")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "containerd not restarted: /etc/containerd/config.toml is unchanged" in second.stdout
    assert "kept [plugins" in second.stdout
    assert config.read_bytes() == installed

    # containerd on the installed config runs the example image with the installed shim,
    # which it finds on its PATH from the runtime's name alone
    dump = subprocess.run(
        [str(CONTAINERD), "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]' in dump.stdout
    with InstalledContainerd(config, node / LIB / SHIM) as c2:
        c2.import_image(images["hello"], namespace="rollout")
        run = c2.ctr(
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            manifests.EXAMPLE_IMAGE,
            new_id("hello"),
            namespace="rollout",
            check=False,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr + c2.log_tail()
        assert run.stdout == "hello from wasm on wasmtime-shim\n"
        assert not c2.wait_for_no_leaks("rollout")

    third = installer(containerd, ns, node, "uninstall", "--root", "/host")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "restored /etc/containerd/config.toml" in third.stdout
    assert "config.toml changed: restart containerd to load it" in third.stdout
    assert config.read_bytes() == original
    assert sorted(p.relative_to(node).as_posix() for p in node.rglob("*") if not p.is_dir()) == [
        "etc/containerd/config.toml"
    ]


def test_heartbeat_example_runs_until_stopped(
    bundle_containerd: PrivateContainerd, images: dict[str, Path]
) -> None:
    """The example Deployment's program keeps printing: it does not exit (and crash-loop)."""
    ns = "heartbeat"
    bundle_containerd.import_image(images["heartbeat"], namespace=ns)
    cid = new_id("hb")
    proc = subprocess.Popen(
        [
            *(str(CTR), "--address", str(bundle_containerd.address), "-n", ns, "run", "--rm"),
            *("--runtime", RUNTIME, manifests.DEPLOYMENT_IMAGE, cid),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # three beats: ~2 s
        assert lines == [b"heartbeat\n"] * 3, lines
        assert proc.poll() is None  # still running
    finally:
        bundle_containerd.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=ns, check=False)
        proc.wait(timeout=60)
    assert not bundle_containerd.wait_for_no_leaks(ns)


def tool(frozen: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The bundle's own `wasmtime-shim`, with an empty environment: no venv, no Python."""
    return subprocess.run(
        [str(frozen.parent / "wasmtime-shim"), *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy_of_bundle(frozen: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the bundle, which the doctor test may break."""
    import shutil

    dest = tmp_path / "bundle"
    shutil.copytree(frozen.parent, dest, symlinks=True)
    yield dest / SHIM


def test_bundle_installs_itself_and_doctor_sees_a_broken_one(
    copy_of_bundle: Path, node: Path
) -> None:
    out = tool(copy_of_bundle, "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: wasmtime-shim"), out
    out = tool(copy_of_bundle, "install", "--root", str(node))  # no --binary: itself
    assert out.returncode == 0, out.stderr
    assert (node / LIB / "wasmtime-shim").is_symlink()  # the installed bundle answers too
    doctor = tool(copy_of_bundle, "doctor", "--root", str(node))
    assert re.search(r"^ok   shim starts: /usr/local/bin/\S+ -v: version ", doctor.stdout, re.M)
    assert f"/run/containerd/containerd.sock (under {node})" in doctor.stdout
    assert doctor.returncode == 1  # no containerd answers under the fake root
    import shutil

    shutil.rmtree(node / LIB / "_internal")
    doctor = tool(copy_of_bundle, "doctor", "--root", str(node))
    assert "ok   shim binary" in doctor.stdout  # the file is there...
    assert re.search(r"^FAIL shim starts: .* -v exited \d+", doctor.stdout, re.M), doctor.stdout
    assert doctor.returncode == 1


def test_readme_states_the_measured_glibc_floor(frozen: Path) -> None:
    """The README's minimum glibc is what the bundle's ELF files really reference."""
    floor, needs = _script("build").glibc_floor(frozen.parent)
    version = ".".join(map(str, floor))
    assert floor >= (2, 17) and len(needs) > 10
    readme = (REPO / "README.md").read_text()
    assert f"glibc {version} or newer" in readme, f"the README must say glibc {version}"
