"""ttrpc, containerd's small RPC protocol over unix sockets.

Layers, bottom up: ``frames`` (sans-IO frame codec), ``messages`` (the Request/Response
envelopes), ``connection`` (sans-IO client and server rules), then the asyncio ``server`` and
``client``. The public names are re-exported here.
"""

from __future__ import annotations

from shim.ttrpc.client import Client, socket_path
from shim.ttrpc.frames import MAX_PAYLOAD, ProtocolError
from shim.ttrpc.messages import NAMESPACE_KEY
from shim.ttrpc.server import CallContext, Method, MethodHandler, PeerCredentials, Server

__all__ = [
    "MAX_PAYLOAD",
    "NAMESPACE_KEY",
    "CallContext",
    "Client",
    "Method",
    "MethodHandler",
    "PeerCredentials",
    "ProtocolError",
    "Server",
    "socket_path",
]
