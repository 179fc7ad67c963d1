"""The node's cache of compiled code: content-addressed, verified before use, bounded.

Layout: `<dir>/<key[:2]>/<key>-<digest>.<module|component>.cwasm`, where `key` names what was
compiled (engine.py: kind, wasmtime version, settings, source bytes) and `digest` is the
sha256 of the entry's own bytes. An entry is written to a temporary file in the same
directory, fsync'ed and renamed into place, so a reader sees a whole entry or none; and its
name carries its digest, so a torn write, a bad sector or a hand-edited file is caught by
`lookup()` before anything maps it: the entry is removed, the caller recompiles, and the note
says so (it reaches the containerd log of the container that asked).

Only one compile runs at a time on the node (a lock file in the directory): each compile
already uses every core, and a second container of a module that is being compiled waits on
the lock and then finds the entry instead of compiling it again. After each store, entries
beyond the size limit are evicted, least recently used first (`lookup()` refreshes an entry's
mtime); the entry just written is never evicted. The directory is created 0700: only root may
write code that containers will map and run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator

from runtimes.base import CacheSettings, Compiled

SUFFIX = ".cwasm"
LOCK_FILE = ".compile.lock"
STALE_TMP = 3600.0  # seconds after which a leftover temporary file is removed
_CHUNK = 1 << 20


def file_digest(path: str) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def entry_is_component(path: str) -> bool:
    """What kind of code an entry holds, from its name."""
    return path.endswith(".component" + SUFFIX)


class Cache:
    """One cache directory. Every method may raise OSError (unreadable or full disk)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.dir = settings.dir
        self.limit = settings.limit

    def _bucket(self, key: str) -> str:
        return os.path.join(self.dir, key[:2])

    def lookup(self, key: str) -> tuple[str | None, str]:
        """(path of a verified entry for `key`, or None; a note for the log).

        A damaged entry is removed and reported in the note."""
        bucket = self._bucket(key)
        try:
            names = sorted(n for n in os.listdir(bucket) if n.startswith(key + "-"))
        except FileNotFoundError:
            return None, ""
        notes: list[str] = []
        for name in names:
            path = os.path.join(bucket, name)
            expected = name[len(key) + 1 :].split(".", 1)[0]
            try:
                actual = file_digest(path)
            except FileNotFoundError:  # evicted under us
                continue
            if actual == expected and name.endswith(SUFFIX):
                os.utime(path)  # the LRU clock
                return path, "; ".join(notes)
            notes.append(f"cache entry {path} was damaged (its sha256 is {actual}); removed")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return None, "; ".join(notes)

    def store(self, key: str, component: bool, data: bytes | bytearray) -> str:
        """Write an entry atomically; its path. Other entries of the same key are removed."""
        bucket = self._bucket(key)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.makedirs(bucket, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        kind = "component" if component else "module"
        path = os.path.join(bucket, f"{key}-{digest}.{kind}{SUFFIX}")
        fd, tmp = tempfile.mkstemp(dir=bucket, prefix=".tmp-", suffix=SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        for name in os.listdir(bucket):
            other = os.path.join(bucket, name)
            if name.startswith(key + "-") and other != path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(other)
        return path

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every entry with its stat; leftover temporary files older than an hour go."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for bucket in os.scandir(self.dir):
                if not bucket.is_dir(follow_symlinks=False):
                    continue
                for entry in os.scandir(bucket.path):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat(follow_symlinks=False)
                        if entry.name.startswith(".tmp-"):
                            if now - st.st_mtime > STALE_TMP:
                                os.unlink(entry.path)
                        elif entry.name.endswith(SUFFIX):
                            yield entry.path, st

    def evict(self, keep: str) -> list[str]:
        """Remove least recently used entries until the total fits the limit; what went."""
        found = sorted(self.entries(), key=lambda e: e[1].st_mtime)
        total = sum(st.st_size for _, st in found)
        removed = []
        for path, st in found:
            if total <= self.limit:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
            total -= st.st_size
        return removed

    @contextlib.contextmanager
    def compile_lock(self) -> Iterator[None]:
        """Held while compiling: one compile at a time on the node (see the docstring)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(
            os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def verified_or_compiled(
    key: str,
    component: bool,
    settings: CacheSettings,
    compile_: Callable[[], bytes | bytearray],
) -> Compiled:
    """The verified entry for `key`, compiling (under the node's lock) when there is none."""
    cache = Cache(settings)
    path, note = cache.lookup(key)
    if path is not None:
        return Compiled(path=path, note=note)
    notes = [note] if note else []
    t0 = time.monotonic()
    with cache.compile_lock():
        waited = time.monotonic() - t0
        path, again = cache.lookup(key)  # the compile we waited for may have made it
        if again:
            notes.append(again)
        if path is not None:
            notes.append(f"another compile of the same module made it ({waited:.1f}s wait)")
            return Compiled(path=path, note="; ".join(notes))
        t1 = time.monotonic()
        data = compile_()
        path = cache.store(key, component, data)
        notes.append(f"compiled in {time.monotonic() - t1:.1f}s")
    removed = cache.evict(keep=path)
    if removed:
        notes.append(f"evicted {len(removed)} least recently used entries")
    return Compiled(path=path, note="; ".join(notes))
