"""`fd_renumber` onto a closed descriptor, as `dup2()` and wasmtime before 37 allow it.

A program that points stdout somewhere else for a while does it, in WASI preview 1, with
`fd_renumber`: yosys around its linked-in ABC moves fds 1 and 2 onto two spare descriptors,
renumbers a capture file onto 1, and afterwards renumbers the spares back onto 1 and 2. In
between, fds 1 and 2 are closed. wasmtime 37 and later (wasmtime-wasi's `p1.rs`, since
upstream #11560) answer EBADF to a renumber whose *target* is not open, so the capture file
never reaches 1 and, worse, stdout never comes back: every later line of the program is
written to a closed descriptor and lost, and the program still exits 0. Under wasmtime 36
(runwasi's) and in POSIX the target may be closed.

wasmtime-py exposes no way into the preview 1 descriptor table, so the fix is a small wasm
module linked in front of wasmtime's `fd_renumber` (`ADAPTER_WAT`), instantiated in the
guest's Store and therefore sharing its WASI context. Its `fd_renumber` calls wasmtime's; on
EBADF, when the source is open and the target is closed (and below 1024), it makes the
target open by opening "." of any open directory descriptor (the rootfs preopen, usually)
until wasmtime hands out the target's number (wasmtime reuses the highest freed number
first, then the next never used one), closes the spare descriptors that took other numbers,
and renumbers again, which now replaces the placeholder. Every other answer, and the EBADF
of a source that is not open, passes through unchanged, so only the calls wasmtime refused
behave differently. Nothing else goes through the adapter, and only modules that import
`fd_renumber` get it.

Upstream would fix this by letting `fd_renumber` in wasmtime-wasi's `p1.rs` take a target
that is not in the descriptor table (insert instead of refusing), as it did before 37.
Components (WASI preview 2) have no descriptor numbers at the host: stdout is a stream the
guest asks for (`wasi:cli/stdout`), as often as it likes, so the host cannot lose it. A
preview 1 program turned into a component carries wasmtime's preview 1 adapter inside it,
whose own `fd_renumber` (descriptors.rs) refuses a closed target the same way; that is the
guest's code, the same under every host, and only rebuilding it with a fixed adapter helps.
"""

from __future__ import annotations

import wasmtime

from runtimes.base import EntrypointKind
from runtimes.wasmtime import engine as eng

NAME = "<fd_renumber adapter>"
WASI = "wasi_snapshot_preview1"

# Memory: "." at 0; an fdstat at 8 (24 bytes; its first byte is the file type, 3 =
# directory); path_open's result at 32; the spare descriptors' numbers from 64 (1024 of them).
# 8 is EBADF. `limit` bounds the target number, the directory search and the spares.
ADAPTER_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) ".")
  (global $limit i32 (i32.const 1024))

  (func $is_open (param $fd i32) (result i32)
    (i32.eqz (call $fdstat (local.get $fd) (i32.const 8))))

  (func $directory (result i32)
    (local $fd i32)
    (block $none
      (loop $next
        (br_if $none (i32.ge_u (local.get $fd) (global.get $limit)))
        (if (call $is_open (local.get $fd))
          (then (if (i32.eq (i32.load8_u (i32.const 8)) (i32.const 3))
            (then (return (local.get $fd))))))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br $next)))
    (i32.const -1))

  (func (export "fd_renumber") (param $from i32) (param $to i32) (result i32)
    (local $err i32) (local $dir i32) (local $n i32) (local $fd i32) (local $got i32)
    (local.set $err (call $renumber (local.get $from) (local.get $to)))
    (if (i32.ne (local.get $err) (i32.const 8)) (then (return (local.get $err))))
    (if (i32.eqz (call $is_open (local.get $from))) (then (return (local.get $err))))
    (if (call $is_open (local.get $to)) (then (return (local.get $err))))
    (if (i32.ge_u (local.get $to) (global.get $limit)) (then (return (local.get $err))))
    (local.set $dir (call $directory))
    (if (i32.eq (local.get $dir) (i32.const -1)) (then (return (local.get $err))))
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $n) (global.get $limit)))
        (br_if $done (call $open (local.get $dir) (i32.const 0) (i32.const 0) (i32.const 1)
          (i32.const 2) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 32)))
        (local.set $fd (i32.load (i32.const 32)))
        (if (i32.eq (local.get $fd) (local.get $to))
          (then (local.set $got (i32.const 1)) (br $done)))
        (i32.store (i32.add (i32.const 64) (i32.shl (local.get $n) (i32.const 2)))
          (local.get $fd))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $again)))
    (block $closed
      (loop $more
        (br_if $closed (i32.eqz (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (drop (call $close
          (i32.load (i32.add (i32.const 64) (i32.shl (local.get $n) (i32.const 2))))))
        (br $more)))
    (if (i32.eqz (local.get $got)) (then (return (local.get $err))))
    (call $renumber (local.get $from) (local.get $to)))
)
"""


def needed(module: wasmtime.Module) -> bool:
    """Whether `module` imports preview 1's `fd_renumber` (the only way to reach it)."""
    return any(i.module == WASI and i.name == "fd_renumber" for i in module.imports)


def source(interruptible: bool = False) -> eng.Source:
    """The adapter as a Source, so that it is compiled and cached like any program."""
    return eng.load_source(ADAPTER_WAT.encode(), EntrypointKind.WAT, NAME, interruptible)


def link(linker: wasmtime.Linker, store: wasmtime.Store, adapter: wasmtime.Module) -> None:
    """Put the adapter's `fd_renumber` in place of wasmtime's in `linker`, for `store`.

    `linker` must already define WASI (the adapter imports wasmtime's functions from it)."""
    exports = linker.instantiate(store, adapter).exports(store)
    linker.allow_shadowing = True
    linker.define(store, WASI, "fd_renumber", exports["fd_renumber"])
    linker.allow_shadowing = False
