"""The node's cache of compiled code (runtimes/wasmtime/cache.py): entries named by their own
digest and checked before use, written atomically, bounded with LRU eviction, and one compile
at a time however many processes ask for the same module."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from runtimes.base import DEFAULT_CACHE_LIMIT, CacheSettings
from runtimes.wasmtime.cache import Cache, file_digest, verified_or_compiled
from shim.serve import DEFAULT_CACHE_DIR, cache_settings, parse_size

KEY_A = "aa" + "1" * 62
KEY_B = "bb" + "2" * 62
KEY_C = "cc" + "3" * 62


def test_store_names_the_entry_by_its_digest_and_lookup_verifies_it(tmp_path: Path) -> None:
    cache = Cache(CacheSettings(str(tmp_path), 1 << 20))
    path = cache.store(KEY_A, False, b"compiled code")
    assert Path(path).name == f"{KEY_A}-{file_digest(path)}.module.cwasm"
    assert Path(path).parent == tmp_path / "aa"
    assert oct(os.stat(tmp_path).st_mode & 0o777) == "0o700"
    assert cache.lookup(KEY_A) == (path, "")
    assert cache.lookup(KEY_B) == (None, "")


def test_a_damaged_entry_is_removed_and_reported(tmp_path: Path) -> None:
    cache = Cache(CacheSettings(str(tmp_path), 1 << 20))
    path = cache.store(KEY_A, True, b"x" * 4096)
    data = bytearray(Path(path).read_bytes())
    data[2048] ^= 0x01  # one bit, in the middle
    Path(path).write_bytes(data)
    found, note = cache.lookup(KEY_A)
    assert found is None
    assert "damaged" in note and path in note
    assert not Path(path).exists()


def test_storing_again_replaces_the_old_entry_of_the_key(tmp_path: Path) -> None:
    cache = Cache(CacheSettings(str(tmp_path), 1 << 20))
    old = cache.store(KEY_A, False, b"first")
    new = cache.store(KEY_A, False, b"second")
    assert not Path(old).exists() and Path(new).exists()
    assert list((tmp_path / "aa").iterdir()) == [Path(new)]


def test_eviction_removes_least_recently_used_first_never_the_new_one(tmp_path: Path) -> None:
    cache = Cache(CacheSettings(str(tmp_path), 2500))
    a = cache.store(KEY_A, False, b"a" * 1000)
    b = cache.store(KEY_B, False, b"b" * 1000)
    old = time.time() - 100
    os.utime(a, (old, old))
    os.utime(b, (old + 10, old + 10))
    cache.lookup(KEY_A)  # used now: A is the most recent of the two
    c = cache.store(KEY_C, False, b"c" * 1000)
    assert cache.evict(keep=c) == [b]
    assert Path(a).exists() and Path(c).exists()
    tiny = Cache(CacheSettings(str(tmp_path), 10))
    assert sorted(tiny.evict(keep=c)) == [a]  # over the limit alone, the kept one stays


def test_leftover_temporary_files_are_removed_when_old(tmp_path: Path) -> None:
    cache = Cache(CacheSettings(str(tmp_path), 1 << 20))
    cache.store(KEY_A, False, b"a")
    stale = tmp_path / "aa" / ".tmp-dead.cwasm"
    fresh = tmp_path / "aa" / ".tmp-live.cwasm"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    list(cache.entries())
    assert not stale.exists() and fresh.exists()


def _compile_slowly(directory: str, marks: str) -> None:
    def compile_() -> bytes:
        with open(marks, "a") as f:
            f.write(f"compile {os.getpid()}\n")
        time.sleep(0.5)
        return b"code"

    verified_or_compiled(KEY_A, False, CacheSettings(directory, 1 << 20), compile_)


def test_a_second_asker_waits_for_the_first_compile_instead_of_compiling(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_compile_slowly, args=(str(tmp_path / "c"), str(marks)))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(marks.read_text().splitlines()) == 1
    done = verified_or_compiled(
        KEY_A, False, CacheSettings(str(tmp_path / "c"), 1 << 20), lambda: pytest.fail("again")
    )
    assert Path(done.path).read_bytes() == b"code"


def test_the_note_says_what_happened(tmp_path: Path) -> None:
    settings = CacheSettings(str(tmp_path), 1 << 20)
    first = verified_or_compiled(KEY_A, False, settings, lambda: b"code")
    assert first.note.startswith("compiled in ")
    again = verified_or_compiled(KEY_A, False, settings, lambda: b"other")
    assert (again.path, again.note) == (first.path, "")


# -- the operator's settings (shim/serve.py, from the environment containerd gives the shim)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2G", 2 << 30),
        ("512M", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("10gb", 10 << 30),
        ("1048576", 1 << 20),
        (" 3 K ", 3 << 10),
        ("1T", 1 << 40),
    ],
)
def test_cache_sizes_are_read_in_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["inf", "nan", "-1G", "2X", "", "G", "1e3", "2 G B"])
def test_what_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_cache_settings_default_disable_and_a_bad_size(caplog: pytest.LogCaptureFixture) -> None:
    assert cache_settings({}) == CacheSettings(DEFAULT_CACHE_DIR, DEFAULT_CACHE_LIMIT)
    assert cache_settings({"WASMTIME_SHIM_CACHE_DIR": ""}) is None
    custom = {"WASMTIME_SHIM_CACHE_DIR": "/srv/c", "WASMTIME_SHIM_CACHE_SIZE": "512M"}
    assert cache_settings(custom) == CacheSettings("/srv/c", 512 << 20)
    bad = {"WASMTIME_SHIM_CACHE_SIZE": "inf"}
    assert cache_settings(bad) == CacheSettings(DEFAULT_CACHE_DIR, DEFAULT_CACHE_LIMIT)
    assert "'inf' is not a size" in caplog.text
