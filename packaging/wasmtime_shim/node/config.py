"""containerd's config.toml: find, add and remove our runtime without disturbing anything else.

The file belongs to the node's owner, so an edit must keep every byte, comment and setting we
do not own. tomlkit parses into a document that prints back exactly what it read; we add (or
delete) one table and print. Removing what we added gives back the original bytes, which is
what makes `uninstall` exact (tests check both directions).

The table lives where the CRI plugin reads runtimes, which depends on the file's `version`:
1 (no `version` key; containerd 1.x's legacy format), 2 (containerd 1.x) and 3 (2.x) name the
plugin differently. k3s/RKE2 templates are Go templates: lines holding `{{ ... }}` are not
TOML, so they are hidden in a marked comment while we edit and put back verbatim afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import ParseError, TOMLKitError
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from shim import RUNTIME_NAME
from shim.errors import AlreadyExists, FailedPrecondition, InvalidArgument

DEFAULT_HANDLER = "wasmtime"
# crun's wasm handlers select wasm by these pod annotations; CRI passes only the listed ones.
WASM_POD_ANNOTATIONS = ("module.wasm.image/variant", "run.oci.handler")
CRI_RUNTIMES: dict[int, tuple[str, ...]] = {
    1: ("plugins", "cri", "containerd", "runtimes"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
}
_TEMPLATE_MARK = "#wasmtime-shim-template#"


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """What we register: `runtimes.<handler>` with these settings and an `options` table."""

    handler: str = DEFAULT_HANDLER
    runtime_path: str | None = None
    pod_annotations: tuple[str, ...] = ()
    runtime_type: str = RUNTIME_NAME

    def __post_init__(self) -> None:
        if not self.handler or any(c in self.handler for c in " .\"'[]\n"):
            raise InvalidArgument(f"handler {self.handler!r}: use letters, digits, - and _")
        if self.runtime_path is not None and not self.runtime_path.startswith("/"):
            raise InvalidArgument(f"runtime_path {self.runtime_path!r} must be absolute")

    def settings(self) -> dict[str, Any]:
        """The keys of the runtime table, in the order they are written."""
        out: dict[str, Any] = {"runtime_type": self.runtime_type}
        if self.runtime_path:
            out["runtime_path"] = self.runtime_path
        if self.pod_annotations:
            out["pod_annotations"] = list(self.pod_annotations)
        return out


@dataclass(frozen=True, slots=True)
class Edit:
    """The result of an edit: the new text, and whether it differs from the old."""

    text: str
    changed: bool
    version: int
    notes: tuple[str, ...] = field(default=())


def parse(text: str, source: str = "config.toml", *, template: bool = False) -> TOMLDocument:
    """Parse `text`; a syntax error becomes InvalidArgument naming `source:line:col`."""
    try:
        return tomlkit.parse(_mask(text) if template else text)
    except ParseError as e:
        raise InvalidArgument(f"{source}:{e.line}:{e.col}: not valid TOML: {e}") from None
    except TOMLKitError as e:  # duplicate keys and tables
        raise InvalidArgument(f"{source}: not valid TOML: {e}") from None


def render(doc: TOMLDocument, *, template: bool = False) -> str:
    text = doc.as_string()
    return _unmask(text) if template else text


def config_version(doc: TOMLDocument, source: str = "config.toml", default: int = 1) -> int:
    """The file's format version: `default` when absent (1 is containerd's own rule; a k3s
    template that starts from k3s's "base" inherits the base's, 2), else 2 or 3."""
    version = doc.get("version", default)
    if isinstance(version, bool) or not isinstance(version, int) or version not in CRI_RUNTIMES:
        raise InvalidArgument(f"{source}: version = {version!r}; expected 2 (1.x) or 3 (2.x)")
    return int(version)


def runtimes_path(version: int) -> tuple[str, ...]:
    return CRI_RUNTIMES[version]


def section_name(version: int, handler: str) -> str:
    """The table header a human would look for, e.g. for messages and docs."""
    plugins, plugin, *rest = CRI_RUNTIMES[version]
    quote = "'" if version == 3 else '"'
    return ".".join([plugins, f"{quote}{plugin}{quote}", *rest, handler])


def find_runtime(doc: TOMLDocument, handler: str, default_version: int = 1) -> Table | None:
    """The `runtimes.<handler>` table of this document's version, if present."""
    node: Any = doc
    for key in (*CRI_RUNTIMES[config_version(doc, default=default_version)], handler):
        if not isinstance(node, (Container, Table)) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, Table) else None


def registered_runtimes(doc: TOMLDocument, default_version: int = 1) -> dict[str, str]:
    """{handler: runtime_type} of every runtime the CRI plugin would see."""
    node: Any = doc
    for key in CRI_RUNTIMES[config_version(doc, default=default_version)]:
        if not isinstance(node, (Container, Table)) or key not in node:
            return {}
        node = node[key]
    return {
        str(name): str(table.get("runtime_type", ""))
        for name, table in node.items()
        if isinstance(table, Table)
    }


def add_runtime(
    text: str,
    entry: RuntimeEntry,
    source: str = "config.toml",
    *,
    template: bool = False,
    force: bool = False,
    default_version: int = 1,
) -> Edit:
    """Register `entry`; unchanged text when an identical registration is already there.

    A table of that handler with different settings is refused (AlreadyExists) unless
    `force`, which rewrites only the keys we own and leaves the rest of the table alone.
    """
    doc = parse(text, source, template=template)
    version = config_version(doc, source, default_version)
    existing = find_runtime(doc, entry.handler, version)
    wanted = entry.settings()
    if existing is not None:
        differs = {k: v for k, v in wanted.items() if _plain(existing.get(k)) != v}
        if not differs:
            return Edit(text, False, version, ("already registered",))
        if not force:
            have = {k: _plain(existing.get(k)) for k in differs}
            raise AlreadyExists(
                f"{source}: [{section_name(version, entry.handler)}] exists with {have}, "
                f"not {differs}; uninstall it first or pass --force"
            )
        for key, value in differs.items():
            existing[key] = value
        return Edit(render(doc, template=template), True, version, ("updated",))
    table = tomlkit.table()
    for key, value in wanted.items():
        table.add(key, value)
    options = tomlkit.table()
    options.add(tomlkit.nl())
    table.add("options", options)
    _attach(doc, (*CRI_RUNTIMES[version], entry.handler), table, source)
    return Edit(render(doc, template=template), True, version, ("added",))


def remove_runtime(
    text: str,
    handler: str,
    source: str = "config.toml",
    *,
    template: bool = False,
    default_version: int = 1,
) -> Edit:
    """Delete `runtimes.<handler>` and the implicit parent tables that only it needed."""
    doc = parse(text, source, template=template)
    version = config_version(doc, source, default_version)
    if find_runtime(doc, handler, version) is None:
        return Edit(text, False, version, ("not registered",))
    # Delete the highest table that exists only to hold ours (implicit tables with no other
    # content), in one deletion: the mirror image of _attach, so the bytes come back exactly.
    keys = (*CRI_RUNTIMES[version], handler)
    chain: list[Any] = [doc]
    for key in keys:
        chain.append(chain[-1][key])
    depth = len(keys) - 1
    while depth > 0:
        node = chain[depth]
        if not (isinstance(node, Table) and node.is_super_table() and len(node) == 1):
            break
        depth -= 1
    del chain[depth][keys[depth]]
    return Edit(render(doc, template=template), True, version, ("removed",))


def minimal_config(version: int) -> str:
    """The smallest file containerd accepts with a given version, for nodes without one."""
    if version not in (2, 3):
        raise InvalidArgument(f"cannot write a version {version} config; use 2 or 3")
    return (
        "# Written by wasmtime-shim install: there was no config.toml. Settings not listed\n"
        "# here keep containerd's defaults (`containerd config default` prints them).\n"
        f"version = {version}\n"
    )


def base_template(distribution: str) -> str:
    """A k3s/RKE2 template for a node without one: the distribution's whole generated
    configuration ("base", k3s >= 1.27 / RKE2 >= 1.27), to which install adds our table. A
    template without that line would replace the distribution's configuration."""
    return (
        f"# Written by wasmtime-shim install: {distribution} renders this template into\n"
        '# config.toml at every start; "base" is its own configuration, ours follows.\n'
        '{{ template "base" . }}\n'
    )


def _attach(doc: TOMLDocument, keys: Sequence[str], table: Table, source: str) -> None:
    """Put `table` at `keys`, adding the missing levels as implicit (super) tables.

    The missing part is built detached and attached with a single `add`: tomlkit then changes
    nothing outside what it adds, and a single deletion (remove_runtime) takes it all back.
    """
    node: Any = doc
    depth = 0
    while depth < len(keys) - 1 and keys[depth] in node:
        node = node[keys[depth]]
        if not isinstance(node, (Table, Container)):
            raise FailedPrecondition(f"{source}: {'.'.join(keys[: depth + 1])} is not a table")
        depth += 1
    subtree: Table = table
    for key in reversed(keys[depth + 1 :]):
        parent = tomlkit.table(is_super_table=True)
        parent.add(key, subtree)
        subtree = parent
    # Outside parsing mode tomlkit "helpfully" adds a blank line to the PREVIOUS table so
    # ours stands apart; that line would then belong to the neighbour and outlive uninstall.
    container = node if isinstance(node, Container) else node.value
    container.parsing(True)
    try:
        node.add(keys[depth], subtree)
    finally:
        container.parsing(False)


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _mask(text: str) -> str:
    return "".join(
        f"{_TEMPLATE_MARK}{line}" if "{{" in line else line for line in text.splitlines(True)
    )


def _unmask(text: str) -> str:
    return "".join(
        line[len(_TEMPLATE_MARK) :] if line.startswith(_TEMPLATE_MARK) else line
        for line in text.splitlines(True)
    )
