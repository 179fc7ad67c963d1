"""The suite's own prerequisite rule: tests/prereq.py (skip locally, fail under CI).

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
