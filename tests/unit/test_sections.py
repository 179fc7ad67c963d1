"""runtimes/wasmtime/sections.py: the initial memory a module declares, from its binary, for
memories wasmtime-py does not list (unexported ones) and those it imports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime

from runtimes.wasmtime.sections import WASM_PAGE, declared_memory


def _declared(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "m.wasm"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return declared_memory(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("wat", "pages"),
    [
        ("(module)", 0),
        ("(module (memory 1024))", 1024),
        ('(module (memory (export "memory") 17 100))', 17),
        ('(module (import "env" "memory" (memory 3)) (func (export "_start")))', 3),
        (
            '(module (type (func)) (import "a" "f" (func (type 0))) (import "a" "t" (table 1 '
            'funcref)) (import "a" "g" (global i32)) (import "a" "m" (memory 2 5)) '
            '(func (export "x")) (data (i32.const 0) "hi"))',
            2,
        ),
        ("(module (memory i64 70000))", 70000),
    ],
)
def test_declared_memory_counts_defined_and_imported_memories(
    tmp_path: Path, wat: str, pages: int
) -> None:
    config = wasmtime.Config()
    config.wasm_memory64 = True
    binary = wasmtime.wat2wasm(wat)
    wasmtime.Module(wasmtime.Engine(config), binary)  # the engine agrees it is valid
    assert _declared(tmp_path, binary) == pages * WASM_PAGE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0asm\x01\0\0",
        b"\0asm\x01\0\0\0\x05\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # endless LEB
        b"\0asm\x01\0\0\0\x05\x10\x01",  # a memory section cut short
        b"\0asm\x0d\0\x01\0",  # a component
        b"(module)",
    ],
)
def test_what_cannot_be_followed_is_unknown_not_an_error(tmp_path: Path, data: bytes) -> None:
    assert _declared(tmp_path, data) == 0
