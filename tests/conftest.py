"""Shared fixtures: the private containerd, per-test namespaces, the wasm test programs.

A missing prerequisite (not root, no containerd, no wasm toolchain) skips the tests that need
it, with the reason; under CI (``CI=true``) it FAILS them instead, so a broken CI machine can
never pass by skipping everything.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import CONTAINERD, CTR, PrivateContainerd, default_shim, sweep_stale
from tests.wasm import build

_namespace_numbers = itertools.count(1)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """Skip (or, in CI, fail) the requesting test unless ``ok``."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the containerd fixture get the ``containerd`` marker automatically."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "containerd" in fixtures and item.get_closest_marker("containerd") is None:
            item.add_marker(pytest.mark.containerd)


@pytest.fixture(scope="session")
def containerd() -> Iterator[PrivateContainerd]:
    """One private containerd for the whole session; stopping it must find nothing to clean."""
    require(os.geteuid() == 0, "needs root to run containerd")
    require(CONTAINERD.exists(), f"{CONTAINERD} is missing (Debian package containerd)")
    require(CTR.exists(), f"{CTR} is missing (Debian package containerd)")
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
