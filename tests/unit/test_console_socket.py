"""shim/io/console_socket.py: receiving a terminal's master the way runc sends it (one
connection, the terminal's name as payload, the descriptor as SCM_RIGHTS)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from shim.errors import Internal
from shim.io.console_socket import ConsoleSocket


def _send(path: str, fds: list[int]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.connect(path)
        socket.send_fds(peer, [b"/dev/pts/7"], fds)


def test_the_master_arrives_and_the_directory_goes() -> None:
    async def main() -> tuple[int, int]:
        sock = ConsoleSocket()
        master, slave = os.openpty()
        try:
            receiving = asyncio.ensure_future(sock.receive())
            await asyncio.to_thread(_send, sock.path, [master])
            got = await asyncio.wait_for(receiving, 20)
        finally:
            os.close(master)
            sock.close()
        assert not Path(sock.path).parent.exists()
        return got, slave

    got, slave = asyncio.run(main())
    try:
        assert not os.get_inheritable(got)
        os.write(got, b"typed\n")  # what the received master types, the slave reads
        assert os.read(slave, 100) == b"typed\n"
    finally:
        os.close(got)
        os.close(slave)


def test_a_peer_that_sends_no_descriptor_is_an_error() -> None:
    async def main() -> None:
        sock = ConsoleSocket()
        try:
            receiving = asyncio.ensure_future(sock.receive())
            await asyncio.to_thread(_send, sock.path, [])
            with pytest.raises(Internal, match="received no terminal"):
                await asyncio.wait_for(receiving, 20)
        finally:
            sock.close()

    asyncio.run(main())
