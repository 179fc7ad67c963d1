"""Shared fixtures: the private containerd, per-test namespaces, the wasm test programs, and
one CRI-enabled containerd with a kubelet-like client for the pod tests.

A missing prerequisite (not root, no containerd, no wasm toolchain) skips the tests that need
it, with the reason; under CI (``CI=true``) it FAILS them instead, so a broken CI machine can
never pass by skipping everything. That rule lives in ``tests/prereq.py``, loaded here as a
plugin.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import versions
from tests.containerd import (
    REPO,
    PrivateContainerd,
    _fresh_base,
    default_shim,
    sweep_stale,
)
from tests.cri import CriClient
from tests.prereq import require
from tests.wasm import build

pytest_plugins = ("tests.prereq",)  # the skip-or-fail rule and its `prerequisite` marker

_namespace_numbers = itertools.count(1)
CRI_WASM_IMAGE = "localhost/cri-wasm/tools:1"


def in_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child; its exit status (0 when it returned, 1 when it raised)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--containerd",
        default=None,
        help=f"containerd release to test against: 1.6 (Debian's, default), 1.7 or 2; sets "
        f"{versions.ENV} (tests/versions.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("--containerd")
    if chosen:
        os.environ[versions.ENV] = chosen
    # containerd 2.2+'s ctr warns on stderr, at every command, that cgroup v1 is deprecated
    # (this machine's hierarchy); the tests compare ctr's stderr with the guest's, so every
    # ctr they run (and the shims' `binary://` loggers) is told not to. The README says so.
    os.environ["CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS"] = "1"
    versions.selected()  # an unknown name stops the run here, saying which names exist


def pytest_report_header() -> str:
    release = versions.selected()
    return f"containerd {release.value}: {versions.binaries(release).containerd}"


# The core subset `make test` also runs on the releases other than the full run's (the
# ``matrix`` marker, `pytest -m matrix`): the task lifecycle through ctr, exec and pause, the
# CRI plugin driven like kubelet, the image formats, nerdctl, the shipped bundle, and what
# only some releases do. One list, so what the matrix covers is decided in one place.
MATRIX_MODULES = frozenset(
    {
        "test_run_lifecycle.py",
        "test_run_basics.py",
        "test_run_failures.py",
        "test_run_io.py",
        "test_exec.py",
        "test_pause.py",
        "test_start_contract.py",
        "test_process_model.py",
        "test_cri_testbed.py",
        "test_cri_wasm.py",
        "test_cri_wasm_policy.py",
        "test_cri_network.py",
        "test_cri_pull.py",
        "test_crictl.py",
        "test_tty.py",
        "test_images.py",
        "test_wasm_layer_images.py",
        "test_artifact_task.py",
        "test_nerdctl.py",
        "test_packaging.py",
        "test_releases.py",
    }
)


@pytest.hookimpl(tryfirst=True)  # before -m matrix selects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests using the containerd fixture get the ``containerd`` marker automatically; tests
    of the matrix modules get ``matrix``; a test marked ``since_containerd(N)`` (what only
    containerd N or later does, e.g. 2.x's ``-info``) is deselected on older releases, where
    what it tests does not exist (not skipped: nothing is missing)."""
    release = versions.selected()
    kept, dropped = [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "containerd" in fixtures and item.get_closest_marker("containerd") is None:
            item.add_marker(pytest.mark.containerd)
        if item.path.name in MATRIX_MODULES and item.path.parent.name == "e2e":
            item.add_marker(pytest.mark.matrix)
        since = item.get_closest_marker("since_containerd")
        too_old = since is not None and versions.binaries(release).major < int(since.args[0])
        (dropped if too_old else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _warm_runtimes() -> set[int]:
    """Pids of the shim warm runtimes (command line ending in `warm`) of containerds this
    checkout's tests may start: their socket is under the repository, or in a temporary dir
    PrivateContainerd or pytest made (another checkout's run on the same machine has its own
    repository, and is not ours to judge)."""
    tmp = tempfile.gettempdir().encode()
    ours = (str(REPO).encode() + b"/", tmp + b"/c-", tmp + b"/pytest-of-")
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"-address" in argv
            and b"warm" in argv
            and any(b"containerd-shim-wasmtime" in a for a in argv)
        ):
            address = dict(itertools.pairwise(argv)).get(b"-address", b"")
            if address.startswith(ours):
                found.add(int(proc.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_stray_warm_runtimes() -> Iterator[None]:
    """Every warm runtime a test caused (any `start` may launch one) is stopped by the end."""
    before = _warm_runtimes()
    yield
    stray = _warm_runtimes() - before
    assert not stray, f"warm runtimes left running: {sorted(stray)}"


@pytest.fixture(scope="session")
def containerd_release() -> versions.Binaries:
    """The containerd the session runs (tests/versions.py), built now if it is not cached
    (``make test`` builds every release before pytest starts); every fixture that starts a
    containerd depends on it, so one that cannot be had skips (under CI: fails) them all."""
    release = versions.selected()
    problem = versions.problem(release)
    require(problem is None, problem or "")
    return versions.ensure(release)


@pytest.fixture(scope="session")
def containerd(containerd_release: versions.Binaries) -> Iterator[PrivateContainerd]:
    """One private containerd for the whole session; stopping it must find nothing to clean."""
    require(os.geteuid() == 0, "needs root to run containerd")
    require(default_shim().exists(), f"{default_shim()} is missing (pip install -e .)")
    sweep_stale()
    instance = PrivateContainerd().start()
    try:
        yield instance
    finally:
        cleaned = instance.stop()
    assert not cleaned, "containerd left these behind:\n" + "\n".join(map(str, cleaned))


@pytest.fixture
def ns(containerd: PrivateContainerd, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh containerd namespace for one test; at teardown it must hold no leaks.

    Leaks are cleaned either way so one test's mess does not fail the next one; the test then
    errors with the list.
    """
    yield from _fresh_namespace(containerd, request)


@pytest.fixture(scope="session")
def bundle_containerd(
    frozen: Path, containerd_release: versions.Binaries
) -> Iterator[PrivateContainerd]:
    """A private containerd whose shim is the shipped bundle's binary."""
    with PrivateContainerd(shim=frozen) as instance:
        yield instance
    assert not instance.stop_report, "\n".join(map(str, instance.stop_report))


@pytest.fixture(params=["venv", "bundle"])
def bed(request: pytest.FixtureRequest) -> PrivateContainerd:
    """Each test twice: on the session's containerd (the venv's shim) and on the bundle's."""
    name = "containerd" if request.param == "venv" else "bundle_containerd"
    instance: PrivateContainerd = request.getfixturevalue(name)
    return instance


@pytest.fixture
def bed_ns(bed: PrivateContainerd, request: pytest.FixtureRequest) -> Iterator[str]:
    """`ns` on `bed`."""
    yield from _fresh_namespace(bed, request)


def _fresh_namespace(
    containerd: PrivateContainerd, request: pytest.FixtureRequest
) -> Iterator[str]:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40].strip("-")
    name = f"t{next(_namespace_numbers)}-{slug}" if slug else f"t{next(_namespace_numbers)}"
    yield name
    leaks = containerd.wait_for_no_leaks(name)
    cleaned = containerd.clean(name) if leaks else []
    _empty_namespace(containerd, name)
    assert not cleaned, f"namespace {name} left these behind:\n" + "\n".join(map(str, cleaned))


def _empty_namespace(containerd: PrivateContainerd, name: str) -> None:
    """Best effort: remove tasks, containers and images, then the namespace itself."""
    for task in containerd.ctr("tasks", "ls", "-q", namespace=name, check=False).stdout.split():
        containerd.ctr("tasks", "kill", "-s", "SIGKILL", task, namespace=name, check=False)
        containerd.ctr("tasks", "delete", "-f", task, namespace=name, check=False)
    ids = containerd.ctr("containers", "ls", "-q", namespace=name, check=False).stdout.split()
    if ids:
        containerd.ctr("containers", "delete", *ids, namespace=name, check=False)
    refs = containerd.ctr("images", "ls", "-q", namespace=name, check=False).stdout.split()
    if refs:
        containerd.ctr("images", "rm", "--sync", *refs, namespace=name, check=False)
    containerd.ctr("namespaces", "rm", name, check=False)


@pytest.fixture(scope="session")
def build_wasm() -> Callable[[str], Path]:
    """``build_wasm("hello")`` -> path of the compiled ``tests/wasm/c/hello.c`` module."""
    problem = build.toolchain_problem()
    require(problem is None, problem or "")
    return build.build_c


@pytest.fixture(scope="session", params=["venv", "bundle"])
def cri_bed(
    request: pytest.FixtureRequest, containerd_release: versions.Binaries
) -> Iterator[tuple[PrivateContainerd, CriClient]]:
    """A CRI-enabled private containerd (pause + sidecar imported) and a client, per session;
    every CRI test runs twice, once with the venv's shim and once with the shipped bundle's
    (pytest runs all of one before it starts the other).

    Its CNI dirs hold the fake network of ``tests/cni`` (a dead-end eth0 at 127.0.0.2), so pods
    may have their own network namespace; host-network pods never call CNI. It is installed
    before containerd starts because the CRI plugin loads CNI config at start-up, while a
    later install is only noticed asynchronously. Stopping containerd must find nothing left.
    """
    from tests import cni
    from tests.cri import cri_testbed
    from tests.pause import build as native

    require(os.geteuid() == 0, "needs root to run containerd")
    require(default_shim().exists(), f"{default_shim()} is missing (pip install -e .)")
    problem = native.toolchain_problem()
    require(problem is None, problem or "")
    base = _fresh_base()
    # PrivateContainerd's CNI dirs are <base>/cri/cni-bin and <base>/cri/cni-conf.
    cni.install(base / "cri" / "cni-bin", base / "cri" / "cni-conf")
    shim = request.getfixturevalue("frozen") if request.param == "bundle" else None
    with cri_testbed(base, shim=shim) as bed:
        assert bed[0].cri_dir == base / "cri", "PrivateContainerd moved its CNI dirs"
        yield bed
    containerd = bed[0]
    assert not containerd.stop_report, "CRI containerd left:\n" + "\n".join(
        map(str, containerd.stop_report)
    )


@pytest.fixture(scope="session")
def cri_wasm_image(
    cri_bed: tuple[PrivateContainerd, CriClient], build_wasm: Callable[[str], Path]
) -> Iterator[str]:
    """Every C test program at ``/bin/<name>.wasm`` (entrypoint ``/bin/hello.wasm``) as one
    wasm image in the CRI containerd's ``k8s.io`` namespace; returns its reference.

    Imported with ``--all-platforms`` (``import_image``): ctr 1.6 drops wasip1/wasm otherwise.
    """
    from tests.containerd import CRI_NAMESPACE
    from tests.e2e.helpers import make_image, tool_files
    from wasmtime_shim.images.build import ImageConfig

    containerd, client = cri_bed
    image = make_image(
        containerd.base / "wasm-images",
        tool_files(),
        ref=CRI_WASM_IMAGE,
        config=ImageConfig(entrypoint=("/bin/hello.wasm",)),
    )
    containerd.import_image(image.archive, namespace=CRI_NAMESPACE)
    client.wait_image(image.ref)
    yield image.ref
    containerd.ctr("images", "rm", "--sync", image.ref, namespace=CRI_NAMESPACE, check=False)


@pytest.fixture
def crictl(cri_bed: tuple[PrivateContainerd, CriClient]) -> Iterator[CriClient]:
    """The session's CRI client; after each test no pod of it may be left (removed anyway)."""
    client = cri_bed[1]
    yield client
    left = client.cleanup()
    assert not left, f"test left pods behind: {left}"


@pytest.fixture(scope="session")
def frozen() -> Path:
    """The onedir build's binary (built now, or reused from the cache): what ships."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "packaging" / "build.py"),
            "--mode",
            "onedir",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return Path(out.stdout.strip().splitlines()[-1])
