"""``tarefa.serving``: the server ``tarefa serve`` runs parks long polls where it may, and takes
the app's startup heap out of the collector's full passes; on a real socket and SQLite file."""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path

import httpx
import pytest
from api_app import build_app
from starlette.middleware.gzip import GZipMiddleware

from tarefa.serving import GracefulServer, open_descriptors, run_on_fastest_loop, server_config, tarefa_of

pytestmark = pytest.mark.anyio


def test_the_server_parks_long_polls_unless_something_would_be_skipped(tmp_path: Path) -> None:
    app, _, _ = build_app(f"sqlite:///{tmp_path}/s.db", workers=0)
    assert server_config(app).http.held is not None  # type: ignore[union-attr]
    assert server_config(app, proxy_headers=True).http.held is None  # type: ignore[union-attr]
    assert server_config(app, log_level="trace").http.held is None  # type: ignore[union-attr]
    app.add_middleware(GZipMiddleware)
    assert server_config(app).http.held is None  # type: ignore[union-attr]


async def test_startup_freezes_the_heap_the_app_made(tmp_path: Path) -> None:
    app, _, _ = build_app(f"sqlite:///{tmp_path}/g.db", workers=0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = server_config(app, port=sock.getsockname()[1], log_level="warning")
    config.load()
    server = GracefulServer(config, tarefa_of(app))
    server.lifespan = config.lifespan_class(config)
    gc.unfreeze()
    try:
        await server.startup(sockets=[sock])
        assert gc.get_freeze_count() > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as http:
            assert (await http.get("/healthz")).status_code == 200
        await server.shutdown()
    finally:
        gc.unfreeze()


def test_open_descriptors_counts_this_processs_descriptors() -> None:
    before = open_descriptors()
    files = [open(__file__) for _ in range(50)]  # held open on purpose
    try:
        assert open_descriptors() == before + 50
    finally:
        for file in files:
            file.close()
    assert open_descriptors() == before


def test_a_worker_runs_on_uvloop_where_it_is_installed() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_on_fastest_loop(loop_module()).startswith("uvloop")


class _CountingTransport:
    """A real socket transport that records each write it is given."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


async def test_each_answer_of_known_length_leaves_in_one_write_on_a_real_socket() -> None:
    """tarefa's protocol on a real loopback connection (issue 11): uvicorn's request cycle writes
    an answer's head and body apart; through the protocol each answer is one write, keep-alive
    and a HEAD request included."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from uvicorn import Config
    from uvicorn.server import ServerState

    from tarefa.http.protocol import ReadTimeouts, protocol_class

    async def thing(request: object) -> JSONResponse:
        return JSONResponse({"ok": True, "pad": "x" * 200})

    writes: list[bytes] = []
    base = protocol_class(ReadTimeouts())

    class Counting(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(_CountingTransport(transport, writes))  # type: ignore[arg-type]

    config = Config(Starlette(routes=[Route("/thing", thing, methods=["GET", "HEAD"])]), http=Counting, lifespan="off")
    config.load()
    loop = asyncio.get_running_loop()
    state = ServerState()
    server = await loop.create_server(lambda: Counting(config=config, server_state=state, app_state={}), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for method in ("GET", "GET", "HEAD"):  # two answers on one kept-alive connection, then a HEAD
            before = len(writes)
            writer.write(f"{method} /thing HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length) if method == "GET" else b""
            assert writes[before:] == [head + body], writes[before:]
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
