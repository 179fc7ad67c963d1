"""A read-only OCI registry on 127.0.0.1 for the pull tests: kubelet pulls, it never imports.

Every other test puts images into containerd with ``ctr image import``; a node gets them from a
registry, through the CRI plugin's PullImage (on containerd 2.x through its transfer service),
which chooses platforms and unpacks differently. ``Registry`` serves OCI image archives (the
tars ``wasmtime-shim build`` writes) over the distribution API's pull half: ``GET /v2/``,
``GET``/``HEAD`` of ``/v2/<name>/manifests/<tag or digest>`` and ``/v2/<name>/blobs/<digest>``.
A tag names either the archive's whole index (as ``docker buildx`` or ``oras`` push a
multi-platform image) or its single manifest (as a plain push does), so both shapes of one
image can be pulled. Nothing is written; unknown names are 404 with the registry's error body.

``hosts_toml`` writes the ``certs.d/<host>/hosts.toml`` that makes containerd speak plain HTTP
to it (CRI's ``registry.config_path``); it listens on an ephemeral loopback port only.
"""

from __future__ import annotations

import json
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


@dataclass
class _Repo:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    blobs: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (type, data)


class Registry:
    """The server and what it serves; ``add`` archives, then pull ``ref(name, tag)``."""

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry._answer(self, body=True)

            def do_HEAD(self) -> None:
                registry._answer(self, body=False)

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet: the test's assertions say what went wrong

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def ref(self, name: str, tag: str) -> str:
        return f"{self.host}/{name}:{tag}"

    def __enter__(self) -> Registry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, archive: Path, name: str, tag: str, *, whole_index: bool = True) -> str:
        """Serve an OCI archive's blobs under ``name``, and ``tag`` as its index (default)
        or as the index's only manifest; returns the reference to pull."""
        with tarfile.open(archive) as tar:
            index = json.loads(_read(tar, "index.json"))
            blobs = {
                f"sha256:{m.name.rsplit('/', 1)[1]}": _read(tar, m.name)
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith("blobs/sha256/")
            }
        with self._lock:
            repo = self._repos.setdefault(name, _Repo())
            for digest, data in blobs.items():
                repo.blobs[digest] = (_media_type(data), data)
            if whole_index:
                data = json.dumps({**index, "mediaType": INDEX}).encode()
                digest = _sha256(data)
                repo.blobs[digest] = (INDEX, data)
            else:
                (only,) = index["manifests"]
                digest = only["digest"]
            repo.tags[tag] = digest
        return self.ref(name, tag)

    def hosts_toml(self, certs_dir: Path) -> Path:
        """``certs_dir/<host>/hosts.toml``: plain HTTP to this registry, pull and resolve."""
        path = certs_dir / self.host / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        server = f"http://{self.host}"
        path.write_text(
            f'server = "{server}"\n\n[host."{server}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        return path

    def _answer(self, request: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = request.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            return _send(request, HTTPStatus.OK, "application/json", b"{}", body=body)
        match = MANIFEST_PATH.match(path)
        with self._lock:
            repo = self._repos.get(match["name"]) if match else None
            found = None
            if match and repo:
                ref = match["ref"]
                digest = repo.tags.get(ref, ref) if match["kind"] == "manifests" else ref
                found = (digest, repo.blobs.get(digest))
        if not found or found[1] is None:
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": f"{path} not found"}]}
            data = json.dumps(error).encode()
            return _send(request, HTTPStatus.NOT_FOUND, "application/json", data, body=body)
        digest, (media_type, data) = found[0], found[1]
        _send(request, HTTPStatus.OK, media_type, data, body=body, digest=digest)


def _send(
    request: BaseHTTPRequestHandler,
    status: HTTPStatus,
    media_type: str,
    data: bytes,
    *,
    body: bool,
    digest: str = "",
) -> None:
    request.send_response(status)
    request.send_header("Content-Type", media_type)
    request.send_header("Content-Length", str(len(data)))
    request.send_header("Docker-Distribution-API-Version", "registry/2.0")
    if digest:
        request.send_header("Docker-Content-Digest", digest)
    request.end_headers()
    if body:
        request.wfile.write(data)


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in the archive")
    return member.read()


def _media_type(data: bytes) -> str:
    """A manifest's or index's own ``mediaType``; anything else is served as octets."""
    if data[:1] == b"{":
        try:
            doc = json.loads(data)
        except ValueError:
            return "application/octet-stream"
        if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
            return str(doc["mediaType"])
    return "application/octet-stream"


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()
