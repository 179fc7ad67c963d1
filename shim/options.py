"""The flags containerd passes to every invocation of the binary, as one value."""

from __future__ import annotations


class ShimOptions:
    """`-namespace`, `-address` (containerd's gRPC socket), `-publish-binary`, `-id`,
    `-bundle` (delete only; `start` runs in the bundle) and `-debug`.

    A plain class, not a dataclass or NamedTuple: `start` builds one on every container
    start, and those would import `inspect` or `typing`."""

    __slots__ = ("address", "bundle", "debug", "id", "namespace", "publish_binary")

    def __init__(
        self,
        *,
        namespace: str,
        address: str,
        publish_binary: str,
        id: str,
        bundle: str,
        debug: bool,
    ) -> None:
        self.namespace = namespace
        self.address = address
        self.publish_binary = publish_binary
        self.id = id
        self.bundle = bundle
        self.debug = debug

    def __repr__(self) -> str:
        return (
            f"ShimOptions(namespace={self.namespace!r}, address={self.address!r}, "
            f"id={self.id!r}, bundle={self.bundle!r}, debug={self.debug!r})"
        )
