"""shim/oci/content.py reads blobs by their declared size and never keeps more than it.

An image names its blobs' sizes; the content store answers by digest. A wasm layer bigger than
the bound, a store that streams more than the descriptor says, and a descriptor whose size is
not a number all fail before the bytes are kept (the layer goes to the bundle on /run, which
is memory). The store here is a stub of the gRPC stub: only ``Read`` is called.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shim.errors import FailedPrecondition
from shim.oci import content
from shim.oci.mediatypes import MAX_WASM_LAYER

DIGEST = "sha256:" + "ab" * 32


@dataclass
class Chunk:
    data: bytes


@dataclass
class FakeContent:
    chunks: list[bytes]
    requests: list[Any] = field(default_factory=list)

    def Read(self, request: Any, **_: Any) -> Iterator[Chunk]:
        self.requests.append(request)
        return iter(Chunk(c) for c in self.chunks)


def store(chunks: list[bytes]) -> tuple[Any, FakeContent]:
    fake = FakeContent(chunks)
    s = object.__new__(content._Store)
    s.content = fake
    s.metadata = ()
    s.timeout = 5.0
    return s, fake


def test_the_read_asks_for_the_declared_size_only() -> None:
    s, fake = store([b"abc"])
    assert b"".join(s.chunks({"digest": DIGEST, "size": 3}, "layer", 10)) == b"abc"
    assert (fake.requests[0].offset, fake.requests[0].size) == (0, 3)


def test_a_store_answering_more_than_the_size_is_refused_before_it_is_kept() -> None:
    s, _ = store([b"abc", b"d" * 1000])
    with pytest.raises(FailedPrecondition, match="more than its 3 bytes"):
        list(s.chunks({"digest": DIGEST, "size": 3}, "layer", 10))


@pytest.mark.parametrize("size", [MAX_WASM_LAYER + 1, -1, "12", True, None])
def test_a_wasm_layer_of_no_usable_size_is_refused_before_any_read(
    size: object, tmp_path: Path
) -> None:
    s, fake = store([b"x"])
    with pytest.raises(FailedPrecondition, match="size"):
        s.write_blob({"digest": DIGEST, "size": size}, "wasm layer", str(tmp_path))
    assert fake.requests == [] and list(tmp_path.iterdir()) == []


def test_an_index_entry_whose_platform_is_not_an_object_is_skipped() -> None:
    entries = [{"platform": "wasm"}, {"platform": {"architecture": "wasm"}, "digest": DIGEST}]
    assert content._pick_wasm(entries, "index") == entries[1]
