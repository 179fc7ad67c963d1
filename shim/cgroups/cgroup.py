"""The Cgroup object: create, load, update, freeze, kill, stats and remove one container's cgroup.

It ties the path rules (``paths``), the limits (``limits``) and the Metrics readers (``stats``)
to the directories it owns, and removes only those. It does not move processes: it names the
``cgroup.procs`` files (``join_files``) that the forked container process writes itself into.

Ownership. ``create`` claims a container's leaf with ``mkdir``, which the kernel lets exactly
one caller win: a cgroupsPath whose directory exists already (a host cgroup, one left behind,
or another container's, of this pod or any other) is refused with FailedPrecondition, and
nothing is written into it. So every cgroup the shim kills or removes is one it made for that
container, and no two containers ever share one. ``kill_all`` and ``remove`` act on owned
leaves only; a cgroup loaded without ownership (a native container's, which runc made) is for
reading.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shim.cgroups.files import _flat_keyed, _os_call, _read, _write
from shim.cgroups.limits import Resources, _apply_v1, _apply_v2
from shim.cgroups.paths import V2_CONTROLLERS, Layout, Version, cgroupfs_path, detect_layout
from shim.cgroups.stats import _metrics_v1, _metrics_v2
from shim.errors import FailedPrecondition, Internal, NotFound

if TYPE_CHECKING:
    from shim.api.cgroups.v1 import metrics_pb2 as v1_pb
    from shim.api.cgroups.v2 import metrics_pb2 as v2_pb

_SETTLE_SECONDS = 5.0  # how long freeze and rmdir wait for the kernel / exiting processes


@dataclass
class Cgroup:
    """One container's cgroup: a leaf directory per hierarchy (v1) or one directory (v2)."""

    layout: Layout
    path: str  # below each hierarchy root, e.g. "/default/web"
    owned: frozenset[str] = field(default_factory=frozenset)  # leaf dirs remove() may rmdir

    @classmethod
    def create(
        cls,
        cgroups_path: str,
        resources: Mapping[str, Any] | None,
        *,
        layout: Layout | None = None,
    ) -> Cgroup:
        """Make the container's own cgroup and apply the limits (module docstring: a leaf
        that exists already is refused). Raises InvalidArgument, FailedPrecondition,
        Internal; on any failure the leaves made so far are removed again."""
        rel = cgroupfs_path(cgroups_path)
        res = Resources.from_spec(resources)
        cg = cls(layout or detect_layout(), rel)
        cg._refuse_existing(cgroups_path)  # before any parent is made or enabled
        made: list[str] = []
        try:
            for leaf in cg._leaves():
                try:
                    cg._make(leaf)
                except FileExistsError:  # made by someone else since the check: theirs
                    raise _taken(cgroups_path, leaf) from None
                made.append(leaf)
            cg.owned = frozenset(made)
            if cg.layout.version is Version.V2:
                _apply_v2(cg._leaves()[0], res)
            else:
                _apply_v1(cg._dirs(), res)
        except BaseException:
            for leaf in made:
                _rmdir_quiet(leaf)
            raise
        return cg

    @classmethod
    def require_absent(cls, cgroups_path: str, *, layout: Layout | None = None) -> None:
        """Refuse a cgroupsPath whose cgroup exists already, for a container whose runtime
        (runc) makes the cgroup itself: runc would join an existing one, and its kill and
        delete would then reach processes the container never started. Raises
        InvalidArgument, FailedPrecondition."""
        cls(layout or detect_layout(), cgroupfs_path(cgroups_path))._refuse_existing(cgroups_path)

    def _refuse_existing(self, cgroups_path: str) -> None:
        for leaf in self._leaves():
            if os.path.lexists(leaf):
                raise _taken(cgroups_path, leaf)

    @classmethod
    def load(cls, cgroups_path: str, *, owned: bool, layout: Layout | None = None) -> Cgroup | None:
        """The existing cgroup of a container, or None when none of its leaves exists.

        ``owned``: whether the shim created it (the bundle's held record says so, for
        cleanup in ``delete``); then every existing leaf is the shim's to kill and remove.
        Otherwise (a native container's, made by runc) it is only read: stats, members, OOM
        kills."""
        cg = cls(layout or detect_layout(), cgroupfs_path(cgroups_path))
        existing = frozenset(d for d in cg._leaves() if os.path.isdir(d))
        if not existing:
            return None
        cg.owned = existing if owned else frozenset()
        return cg

    # ---- layout ------------------------------------------------------------------------------

    def _dirs(self) -> dict[str, str]:
        """controller -> leaf directory (v2: one entry with key "")."""
        return {c: mount + self.path for c, mount in self.layout.mounts.items()}

    def _leaves(self) -> list[str]:
        """Distinct leaf directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self._dirs().values()))

    def _make(self, leaf: str) -> None:
        """Make `leaf`'s missing parents, then `leaf` itself with a plain mkdir: raises
        FileExistsError when it exists (the claim, see `create`)."""
        if self.layout.version is Version.V1:
            _os_call(os.makedirs, os.path.dirname(leaf), exist_ok=True)
            _os_call(os.mkdir, leaf)
            return
        # v2: a controller reaches a cgroup only when every ancestor enables it for its children.
        mount = self.layout.mounts[""]
        current = mount
        for name in self.path.strip("/").split("/"):
            available = set(_read(os.path.join(current, "cgroup.controllers")).split())
            enabled = set(_read(os.path.join(current, "cgroup.subtree_control")).split())
            wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
            if wanted:
                _write(
                    os.path.join(current, "cgroup.subtree_control"),
                    " ".join("+" + c for c in wanted),
                )
            current = os.path.join(current, name)
            if current == leaf:
                _os_call(os.mkdir, current)
            elif not os.path.isdir(current):
                with contextlib.suppress(FileExistsError):  # a parent: anyone's to share
                    _os_call(os.mkdir, current)

    def _existing(self) -> list[str]:
        leaves = [d for d in self._leaves() if os.path.isdir(d)]
        if not leaves:
            raise NotFound(f"cgroup {self.path} does not exist")
        return leaves

    # ---- processes ---------------------------------------------------------------------------

    def join_files(self) -> tuple[str, ...]:
        """The cgroup.procs files a process writes "0" (itself) into to join, whole.

        On v1 a process with a single thread may write "0" into the `tasks` file beside
        each instead (shim/proc/child.py does): the kernel moves the calling thread without
        taking the global threadgroup lock, whose first writer after a quiet moment waits
        for an RCU grace period (5 to 25 ms on this host, measured)."""
        return tuple(os.path.join(d, "cgroup.procs") for d in self._leaves())

    def memory_usage_file(self) -> str | None:
        """The file holding the cgroup's current memory charge in bytes, if memory is managed.

        A container process reads it after its engine is ready, to leave the guest's linear
        memory only the room its cgroup limit has left (see shim/proc/child.py)."""
        if self.layout.version is Version.V2:
            name = os.path.join(self.layout.mounts[""] + self.path, "memory.current")
        elif "memory" in self.layout.mounts:
            name = os.path.join(self.layout.mounts["memory"] + self.path, "memory.usage_in_bytes")
        else:
            return None
        return name if os.path.exists(name) else None

    def pids(self) -> list[int]:
        """Members in any hierarchy (a process half-way through joining still counts)."""
        found: set[int] = set()
        for leaf in self._existing():
            text = _read(os.path.join(leaf, "cgroup.procs"), missing="")
            found.update(int(x) for x in text.split())
        return sorted(found)

    def kill_all(self, sig: int) -> None:
        """Signal every member of a cgroup the shim created; frozen meanwhile so that a
        forking process cannot escape the sweep. Raises FailedPrecondition for a cgroup it
        did not create (it never signals processes it did not start).

        v2's ``cgroup.kill`` takes the whole subtree, so it is used only while the leaf has
        no cgroup below it (one the shim did not make, such as another container nested
        there); otherwise, and on v1, the leaf's own members are signalled."""
        if not self.owned:
            raise FailedPrecondition(
                f"cgroup {self.path} was not created by the shim; it signals only its own"
            )
        leaf = self._existing()[0]
        if self.layout.version is Version.V2 and sig == signal.SIGKILL:
            kill_file = os.path.join(leaf, "cgroup.kill")
            if os.path.exists(kill_file) and not _has_subdirs(leaf):
                _write(kill_file, "1")
                return
        # Freeze for the sweep unless already frozen (a paused container stays paused).
        sweep_frozen = self._freeze_file() is not None and not self.frozen()
        if sweep_frozen:
            self.freeze()
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        finally:
            if sweep_frozen:
                self.thaw()

    def update(self, res: Resources) -> None:
        """Write new limits (an Update) into the existing directories, in the same order and
        with the same conversions as Create. Raises NotFound when the cgroup is gone, and
        Internal naming the file the kernel refused (v1 refuses a memory limit below the
        current usage with EBUSY)."""
        self._existing()
        if self.layout.version is Version.V2:
            _apply_v2(self._leaves()[0], res)
        else:
            _apply_v1(self._dirs(), res)

    # ---- freezer -----------------------------------------------------------------------------

    def _freeze_file(self) -> str | None:
        if self.layout.version is Version.V2:
            path = os.path.join(self._leaves()[0], "cgroup.freeze")
        elif "freezer" in self.layout.mounts:
            path = os.path.join(self._dirs()["freezer"], "freezer.state")
        else:
            return None
        return path if os.path.exists(path) else None

    def frozen(self) -> bool:
        """Whether the kernel reports the cgroup frozen (False without a freezer)."""
        path = self._freeze_file()
        if path is None:
            return False
        if self.layout.version is Version.V2:
            events = _read(os.path.join(os.path.dirname(path), "cgroup.events"))
            return "frozen 1" in events.splitlines()
        return _read(path).strip() == "FROZEN"

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> None:
        """Ask, then wait until the kernel reports the state (freezing is asynchronous)."""
        self._existing()
        path = self._freeze_file()
        if path is None:
            raise FailedPrecondition(f"cgroup {self.path} has no freezer")
        value = (
            ("1" if frozen else "0")
            if self.layout.version is Version.V2
            else ("FROZEN" if frozen else "THAWED")
        )
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            _write(path, value)  # v1 may stay FREEZING until asked again
            if self.frozen() == frozen:
                return
            if time.monotonic() > deadline:
                raise Internal(f"cgroup {self.path}: {path} did not reach {value!r}")
            time.sleep(0.01)

    # ---- stats -------------------------------------------------------------------------------

    def metrics(self) -> v1_pb.Metrics | v2_pb.Metrics:
        """io.containerd.cgroups.v1.Metrics or .v2.Metrics, from whatever files exist (see
        ``stats.py`` for why a protobuf message is built this far from the RPC layer).

        Raises NotFound when the cgroup is gone (containerd skips such a task silently).
        """
        self._existing()
        if self.layout.version is Version.V2:
            return _metrics_v2(self._leaves()[0])
        return _metrics_v1(self._dirs())

    def oom_killed_count(self) -> int:
        """How many processes the OOM killer took in this cgroup (0 without a memory controller)."""
        dirs = self._dirs()
        if self.layout.version is Version.V2:
            self._existing()
            text = _read(os.path.join(dirs[""], "memory.events"), missing="")
        elif "memory" in dirs:
            text = _read(os.path.join(dirs["memory"], "memory.oom_control"))
        else:
            return 0
        return _flat_keyed(text).get("oom_kill", 0)

    # ---- cleanup -----------------------------------------------------------------------------

    def remove(self) -> None:
        """rmdir the leaves this object owns (and any sub-cgroups inside them), never a parent.

        Retries while the kernel still counts exiting processes; idempotent. Raises Internal
        naming the directory if it stays busy.
        """
        for leaf in sorted(self.owned):
            for sub in _subdirs_bottom_up(leaf):
                _rmdir_patiently(sub)


def _taken(cgroups_path: str, leaf: str) -> FailedPrecondition:
    """The refusal of a cgroupsPath whose leaf exists (module docstring, "Ownership")."""
    try:
        members = f"{len(_read(os.path.join(leaf, 'cgroup.procs'), missing='').split())}"
    except Internal:
        members = "unknown"
    return FailedPrecondition(
        f"cgroupsPath {cgroups_path!r}: the cgroup {leaf} exists already (processes in it: "
        f"{members}); the shim runs a container only in a cgroup it creates for it, so that "
        "Kill and Delete never reach processes it did not start: give every container a "
        "cgroupsPath of its own"
    )


def _has_subdirs(leaf: str) -> bool:
    with os.scandir(leaf) as entries:
        return any(e.is_dir(follow_symlinks=False) for e in entries)


def _subdirs_bottom_up(leaf: str) -> Iterator[str]:
    for top, dirnames, _files in os.walk(leaf, topdown=False):
        for name in dirnames:
            yield os.path.join(top, name)
    yield leaf


def _rmdir_patiently(path: str) -> None:
    deadline = time.monotonic() + _SETTLE_SECONDS
    delay = 0.005
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise Internal(f"cannot remove cgroup {path}: {e.strerror}") from e
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _rmdir_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
