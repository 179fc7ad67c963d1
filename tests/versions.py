"""Which containerd the suite runs against: Debian's 1.6, or 1.7 and 2.x built from the proxy.

Kubernetes nodes run containerd 1.6, 1.7 and 2.x, and the shim must work with each. The suite
takes one of them per run, named by the ``TEST_CONTAINERD`` environment variable (or pytest's
``--containerd`` option, which sets it): ``1.6`` (the default), ``1.7`` or ``2``.

- ``1.6`` is Debian 12's package: ``/usr/bin/containerd``, ``ctr`` and
  ``containerd-shim-runc-v2`` (the native containers' shim).
- ``1.7`` and ``2`` are built by tests/gobuild.py from the Go module proxy: containerd, ctr
  and containerd-shim-runc-v2 of the same release (a 2.x containerd with 1.6's runc shim is
  not what a node runs), into ``.cache/go/bin/containerd-<version>/``, once; a later run
  builds nothing. 1.7.35 is a 1.7 patch release the proxy serves, 2.4.2 the newest 2.x it
  listed when this was written.
  Each takes about 2 minutes to build from cold on the 2-core test machine.

nerdctl v1.7.7 (tests/nerdctl.py) drives all three.

``python -m tests.versions build 1.7 2`` builds what is missing of the releases named and
prints where each is (what ``make test`` runs first for its releases, so a build failure says
so before any test starts); ``python -m tests.versions selected`` prints the selected one.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tests import golang
from tests.gobuild import GO_DIR, GoBuildError, build_commands
from tests.prereq import in_ci

ENV = "TEST_CONTAINERD"
DEBIAN_BIN = Path("/usr/bin")


class Release(enum.Enum):
    """A containerd line the suite supports, by the name ``TEST_CONTAINERD`` gives it."""

    V1_6 = "1.6"
    V1_7 = "1.7"
    V2 = "2"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a release comes from: Debian (``module`` empty) or a Go module at ``version``."""

    version: str
    module: str = ""

    @property
    def built(self) -> bool:
        return bool(self.module)


SOURCES: dict[Release, Source] = {
    Release.V1_6: Source("1.6.20"),
    Release.V1_7: Source("v1.7.35", "github.com/containerd/containerd"),
    Release.V2: Source("v2.4.2", "github.com/containerd/containerd/v2"),
}
COMMANDS = ("containerd", "ctr", "containerd-shim-runc-v2")


@dataclass(frozen=True, slots=True)
class Binaries:
    """One release's programs; ``runc_shim`` goes first on containerd's PATH."""

    release: Release
    version: str
    containerd: Path
    ctr: Path
    runc_shim: Path

    @property
    def major(self) -> int:
        return 2 if self.release is Release.V2 else 1


class UnknownRelease(ValueError):
    """``TEST_CONTAINERD`` names no release this suite knows."""


def selected() -> Release:
    """The release named by ``TEST_CONTAINERD`` (default 1.6)."""
    name = os.environ.get(ENV, "").strip() or Release.V1_6.value
    return parse(name, f"{ENV}={name!r}")


def parse(name: str, what: str = "") -> Release:
    """The release a name means (``1.6``, ``1.7``, ``2``; ``2.x`` and ``1.7.x`` too)."""
    aliases = {"2.x": "2", "1.6.20": "1.6", "1.7.x": "1.7"}
    try:
        return Release(aliases.get(name, name))
    except ValueError:
        known = ", ".join(r.value for r in Release)
        message = f"{what or repr(name)} names no containerd release; use one of {known}"
        raise UnknownRelease(message) from None


def build_dir(release: Release) -> Path:
    """Where a built release's programs live (the version is in the name)."""
    return GO_DIR / "bin" / f"containerd-{SOURCES[release].version}"


def binaries(release: Release) -> Binaries:
    """The release's programs, where they are or will be once built (see ``ensure``)."""
    source = SOURCES[release]
    where = build_dir(release) if source.built else DEBIAN_BIN
    return Binaries(
        release,
        source.version,
        where / "containerd",
        where / "ctr",
        where / "containerd-shim-runc-v2",
    )


def problem(release: Release) -> str | None:
    """Why the release cannot be had here (for ``require``), or None."""
    found = binaries(release)
    missing = [p for p in (found.containerd, found.ctr, found.runc_shim) if not p.exists()]
    if not missing:
        return None
    if not SOURCES[release].built:
        names = ", ".join(str(p) for p in missing)
        return f"containerd {release.value} is Debian's package containerd; missing: {names}"
    go = golang.problem()
    return f"containerd {release.value} must be built from the Go proxy: {go}" if go else None


def ensure(release: Release) -> Binaries:
    """The release's programs, built first if they are not cached yet (GoBuildError if the
    build fails); Debian's are returned as they are (``problem`` says if they are missing)."""
    source = SOURCES[release]
    found = binaries(release)
    if source.built:
        # containerd's own version string, as its release builds set it (`ctr version`, the
        # CRI plugin's Version answer and the shim's -info all report it).
        stamp = f"-X {source.module}/version.Version={source.version.removeprefix('v')}"
        packages = [f"./cmd/{name}" for name in COMMANDS]
        build_commands(source.module, source.version, packages, build_dir(release), ldflags=stamp)
    return found


def main(argv: list[str]) -> int:
    """``build [RELEASE ...]`` (those of them built from the proxy; Debian's 1.6 is a package)
    or ``selected``."""
    if argv[:1] == ["selected"]:
        print(selected().value)
        return 0
    if argv[:1] != ["build"]:
        print("usage: python -m tests.versions build [1.7 2] | selected", file=sys.stderr)
        return 2
    try:
        releases = [parse(name) for name in argv[1:]]
    except UnknownRelease as exc:
        print(exc, file=sys.stderr)
        return 2
    releases = [r for r in dict.fromkeys(releases) if SOURCES[r].built]  # none named: none
    missing_go = golang.problem()
    if releases and missing_go:
        # Like `make go-check`: fatal under CI, a warning elsewhere (their tests then skip).
        names = " ".join(r.value for r in releases)
        print(f"containerd {names} cannot be built: {missing_go}", file=sys.stderr)
        return 1 if in_ci() else 0
    status = 0
    for release in releases:
        try:
            found = ensure(release)
        except GoBuildError as exc:
            print(f"containerd {release.value}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"containerd {found.version}: {found.containerd.parent}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
