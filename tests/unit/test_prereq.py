"""The suite's own prerequisite rules: tests/prereq.py (skip locally, fail under CI) and
tests/golang.py (which Go the suite uses, and the check ``make test`` runs).

The skip-or-fail rule is checked from outside: pytest runs in a subprocess on small generated
test files, once without CI and once with ``CI=true``, and each test's outcome is read from
its JUnit XML report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import golang

REPO = Path(__file__).resolve().parents[2]

GENERATED = {
    "test_inline.py": """
        import pytest

        from tests.prereq import needs, require


        @pytest.fixture
        def gadget():
            require(False, "no gadget here")


        def test_require_in_body():
            require(False, "no widget here")


        def test_require_in_fixture(gadget):
            pass


        @needs(False, "no gizmo here")
        def test_needs_marker():
            pass


        @needs(True, "never shown")
        def test_needs_met():
            require(True, "never shown")
        """,
    "test_module.py": """
        from tests.prereq import needs

        pytestmark = needs(False, "no doohickey here")


        def test_in_marked_module():
            pass
        """,
}
UNMET = {
    "test_require_in_body": "no widget here",
    "test_require_in_fixture": "no gadget here",
    "test_needs_marker": "no gizmo here",
    "test_in_marked_module": "no doohickey here",
}


def _run_generated(tmp_path: Path, ci: str | None) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run pytest on the generated files; exit code and {test: (outcome, message)}."""
    for name, text in GENERATED.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    argv = ["-p", "tests.prereq", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini")]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *argv, f"--junitxml={report}", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.exists(), done.stdout + done.stderr
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("skipped", "failure", "error"):
                outcome = child.tag
                message = f"{child.get('message', '')} {child.text or ''}"
        outcomes[case.get("name", "")] = (outcome, message)
    return done.returncode, outcomes


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_unmet_prerequisites_skip_outside_ci(tmp_path: Path, ci: str | None) -> None:
    code, outcomes = _run_generated(tmp_path, ci)
    assert set(outcomes) == {*UNMET, "test_needs_met"}
    assert outcomes["test_needs_met"] == ("passed", "")
    for test, reason in UNMET.items():
        outcome, message = outcomes[test]
        assert outcome == "skipped" and reason in message, (test, outcomes[test])
    assert code == 0


@pytest.mark.parametrize("ci", ["true", "1", "YES"])
def test_unmet_prerequisites_fail_under_ci(tmp_path: Path, ci: str) -> None:
    code, outcomes = _run_generated(tmp_path, ci)
    assert set(outcomes) == {*UNMET, "test_needs_met"}
    assert outcomes["test_needs_met"] == ("passed", "")
    for test, reason in UNMET.items():
        outcome, message = outcomes[test]
        assert outcome in ("failure", "error"), (test, outcomes[test])
        assert f"prerequisite missing in CI: {reason}" in message, (test, message)
    assert code == 1


def test_no_test_skips_on_its_own() -> None:
    """Every skip goes through tests/prereq.py, or CI could pass by skipping."""
    words = ("pytest.skip(", "skipif", "importorskip", "mark.skip")
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        if path.name != "prereq.py" and path != Path(__file__)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(word in line for word in words)
    ]
    assert offenders == []


# ---- tests/golang.py -------------------------------------------------------------------------


def _fake_go(directory: Path, version: str) -> Path:
    """A ``go`` that answers ``go env GOVERSION`` with ``version`` (empty: says nothing)."""
    directory.mkdir(parents=True, exist_ok=True)
    go = directory / "go"
    go.write_text(f'#!/bin/sh\n[ "$1 $2" = "env GOVERSION" ] && echo "{version}"\nexit 0\n')
    go.chmod(0o755)
    return go


def test_go_too_old_on_path_gives_way_to_the_official_toolchain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _fake_go(tmp_path / "debian", "go1.19.8")
    new = _fake_go(tmp_path / "official", "go1.26.8")
    monkeypatch.delenv("GO", raising=False)
    monkeypatch.setenv("PATH", f"{old.parent}:/usr/bin:/bin")
    monkeypatch.setattr(golang, "OFFICIAL", new)
    assert golang.candidates() == [old, new]
    assert golang.find() == golang.Go(new, (1, 26, 8))
    assert golang.go_binary() == new and golang.problem() is None


def test_only_old_or_broken_go_is_a_problem_naming_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _fake_go(tmp_path / "debian", "go1.19.8")
    mute = _fake_go(tmp_path / "mute", "")
    monkeypatch.delenv("GO", raising=False)
    monkeypatch.setenv("PATH", f"{old.parent}:/usr/bin:/bin")
    monkeypatch.setattr(golang, "OFFICIAL", mute)
    problem = golang.problem()
    assert golang.go_binary() is None and problem is not None
    assert f"{old} is go1.19.8" in problem and f"{mute} reports no Go version" in problem
    assert "Go >= 1.26.6" in problem and "https://go.dev/dl/" in problem


def test_a_patch_release_below_the_minimum_is_too_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd 2.4.2's and crictl's go.mod say go 1.26.6: 1.26.5 cannot build them."""
    close = _fake_go(tmp_path / "close", "go1.26.5")
    monkeypatch.setenv("GO", str(close))
    assert golang.go_binary() is None
    assert f"{close} is go1.26.5" in (golang.problem() or "")


def test_go_variable_is_the_only_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = _fake_go(tmp_path / "mine", "go1.27")
    monkeypatch.setenv("GO", str(mine))
    assert golang.candidates() == [mine]
    assert golang.find() == golang.Go(mine, (1, 27, 0))
    monkeypatch.setenv("GO", str(tmp_path / "nowhere" / "go"))
    assert golang.go_binary() is None
    assert f"none found at {tmp_path / 'nowhere' / 'go'}" in (golang.problem() or "")


@pytest.mark.parametrize(("ci", "code"), [("true", 1), ("", 0)])
def test_make_check_fails_without_go_only_under_ci(tmp_path: Path, ci: str, code: int) -> None:
    """``python -m tests.golang``, what ``make test`` runs before pytest."""
    env = {**os.environ, "GO": str(tmp_path / "no-go"), "CI": ci}
    done = subprocess.run(
        [sys.executable, "-m", "tests.golang"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert "MISSING PREREQUISITE: the tests need Go >= 1.26.6" in done.stderr
