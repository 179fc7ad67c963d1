"""Wire compatibility with the reference implementation, containerd/ttrpc (Go).

A small Go program, built from Debian's golang-github-containerd-containerd-dev sources
(GOPATH mode, no network), serves and calls a test service; our client and server talk to it.
Go is the one tests/golang.py finds. Without Go or those sources the tests skip, and fail under
CI (tests/prereq.py); a failed build always fails. The first build takes ~40 s, later ones are
cached.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

from shim.errors import DeadlineExceeded, NotFound, Unimplemented
from shim.ttrpc.client import Client
from shim.ttrpc.messages import NAMESPACE_KEY
from shim.ttrpc.server import CallContext, Server
from tests import golang
from tests.prereq import require

GOPATH = "/usr/share/gocode"
Str = wrappers_pb2.StringValue

GO_PROGRAM = r"""
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func echo(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req types.StringValue
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	ns, _ := ttrpc.GetMetadataValue(ctx, "containerd-namespace-ttrpc")
	_, hasDeadline := ctx.Deadline()
	return &types.StringValue{Value: fmt.Sprintf("go:%s:%s:%v", req.Value, ns, hasDeadline)}, nil
}

func fail(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	return nil, status.Errorf(codes.NotFound, "go says no")
}

func block(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func main() {
	mode, path := os.Args[1], os.Args[2]
	if mode == "server" {
		s, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()))
		if err != nil {
			panic(err)
		}
		methods := map[string]ttrpc.Method{"Echo": echo, "Fail": fail, "Block": block}
		s.Register("test.v1.Echo", methods)
		l, err := net.Listen("unix", path)
		if err != nil {
			panic(err)
		}
		fmt.Println("ready")
		s.Serve(context.Background(), l)
		return
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		panic(err)
	}
	c := ttrpc.NewClient(conn)
	md := ttrpc.MD{"containerd-namespace-ttrpc": []string{"gons"}}
	ctx, cancel := context.WithTimeout(ttrpc.WithMetadata(context.Background(), md), 10*time.Second)
	defer cancel()
	for _, method := range []string{"Echo", "Fail", "Missing"} {
		var resp types.StringValue
		err := c.Call(ctx, "test.v1.Echo", method, &types.StringValue{Value: "hi"}, &resp)
		st := status.Convert(err)
		fmt.Printf("%s|%s|%v|%s\n", method, resp.Value, st.Code(), st.Message())
	}
}
"""


@pytest.fixture(scope="module")
def interop_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = golang.require_go()
    sources = Path(GOPATH, "src/github.com/containerd/ttrpc")
    # Debian's golang-github-containerd-ttrpc-dev, which make deps installs with containerd-dev
    require(sources.is_dir(), f"{sources} is missing (golang-github-containerd-ttrpc-dev)")
    src = tmp_path_factory.mktemp("gottrpc")
    (src / "main.go").write_text(GO_PROGRAM)
    env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "GOFLAGS": ""}
    build = subprocess.run(
        [go, "build", "-o", "interop", "."], cwd=src, env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, f"{go} cannot build the ttrpc program:\n{build.stderr[-2000:]}"
    return src / "interop"


def test_our_client_against_go_server(interop_binary: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "go.sock")
    proc = subprocess.Popen([interop_binary, "server", path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        asyncio.run(_drive_go_server(path))
    finally:
        proc.kill()
        proc.wait()


async def _drive_go_server(path: str) -> None:
    async with await Client.connect(path) as client:
        meta = {NAMESPACE_KEY: "pyns"}
        replies = await asyncio.gather(
            *(
                client.call(
                    "test.v1.Echo", "Echo", Str(value=str(i)), Str, timeout=10, metadata=meta
                )
                for i in range(50)
            )
        )
        assert [r.value for r in replies] == [f"go:{i}:pyns:true" for i in range(50)]
        plain = await client.call("test.v1.Echo", "Echo", Str(value="x"), Str)
        assert plain.value == "go:x::false"
        with pytest.raises(NotFound, match="go says no"):
            await client.call("test.v1.Echo", "Fail", Str(), Str)
        with pytest.raises(Unimplemented, match="method Missing"):
            await client.call("test.v1.Echo", "Missing", Str(), Str)
        with pytest.raises(Unimplemented, match="service nope"):
            await client.call("nope", "Echo", Str(), Str)
        with pytest.raises(DeadlineExceeded):
            await client.call("test.v1.Echo", "Block", Str(), Str, timeout=0.05)
        assert (await client.call("test.v1.Echo", "Echo", Str(value="y"), Str)).value == (
            "go:y::false"
        )


def test_go_client_against_our_server(interop_binary: Path, tmp_path: Path) -> None:
    lines = asyncio.run(_serve_go_client(interop_binary, str(tmp_path / "py.sock")))
    assert lines == [
        "Echo|py:hi:gons:True|OK|",
        "Fail||NotFound|py says no",
        "Missing||Unimplemented|method Missing",
    ]


async def _serve_go_client(binary: Path, path: str) -> list[str]:
    async def echo(req: Str, ctx: CallContext) -> Str:
        return Str(value=f"py:{req.value}:{ctx.namespace}:{ctx.deadline is not None}")

    async def fail(req: Str, ctx: CallContext) -> Str:
        raise NotFound("py says no")

    server = Server()
    server.register_service("test.v1.Echo", {"Echo": (echo, Str), "Fail": (fail, Str)})
    await server.start(path)
    proc = await asyncio.create_subprocess_exec(
        binary, "client", path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    await server.shutdown()
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()
