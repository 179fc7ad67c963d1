"""The one way a test may give up for a missing prerequisite: skip locally, FAIL under CI.

A developer's machine may lack root, Go or a kernel feature, and the tests that need them say
so by skipping with the reason. A CI machine must have everything: there ``CI=true`` (as
``.ci/run`` sets it) turns the same condition into a failure, so a broken CI machine can never
pass by skipping. No test calls ``pytest.skip``, ``skipif`` or ``importorskip`` directly.

Two forms, one rule:

- ``require(ok, reason)`` inside a test or a fixture, when the condition is known only there;
- ``needs(ok, reason)``, a marker for a test, a class or a whole module (``pytestmark``), when
  the condition is known at import. This module is a pytest plugin (``tests/conftest.py``
  loads it): it registers the marker and applies it before the test's fixtures are set up.

PYTEST_DONT_REWRITE: nothing here asserts, and conftest imports this module before pytest
loads it as a plugin, which would otherwise warn that it is too late to rewrite it.
"""

from __future__ import annotations

import os

import pytest

MARKER = "prerequisite"


def in_ci() -> bool:
    """Whether this run is CI (``CI`` is ``1``, ``true`` or ``yes``, in any case)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """Skip the calling test unless ``ok``; under CI fail it instead, with the reason."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def needs(ok: bool, reason: str) -> pytest.MarkDecorator:
    """A marker with ``require(ok, reason)``'s effect, applied when each marked test starts."""
    return getattr(pytest.mark, MARKER)(ok, reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(ok, reason): skip unless ok, fail under CI=true (tests/prereq.py needs())",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(MARKER):
        require(*mark.args, **mark.kwargs)
