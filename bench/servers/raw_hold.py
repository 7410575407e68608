"""The floors of W5 below the framework: uvicorn (uvloop, httptools) and a raw ASGI handler holding
each request on a timer, with uvicorn's own protocol or tarefa's (``tarefa.http.protocol``).

    python -m bench.servers.raw_hold PORT uvicorn|tarefa|parked

``GET /<any>?until=T`` answers ``{}`` at the wall-clock time ``T``. ``parked``: tarefa's protocol
holding each request on a timer with no task (as ``tarefa.http.held`` parks a long poll), the
answer sent by a short task through uvicorn's request cycle: the floor of a parked long poll.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any
from urllib.parse import parse_qs

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    until = float(parse_qs(scope["query_string"].decode()).get("until", ["0"])[0])
    await asyncio.sleep(max(0.0, until - time.time()))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _park(protocol: Any, cycle: Any, app: Any) -> None:
    until = float(parse_qs(cycle.scope["query_string"].decode()).get("until", ["0"])[0])
    protocol.loop.call_later(max(0.0, until - time.time()), protocol.start_answer, cycle, _answer)


def main() -> None:
    port, protocol = int(sys.argv[1]), sys.argv[2]
    http: Any = "httptools"
    if protocol in ("tarefa", "parked"):
        from tarefa.http.protocol import ReadTimeouts, protocol_class

        http = protocol_class(ReadTimeouts())
    if protocol == "parked":
        http = type("Parked", (http,), {"_start_asgi_task": _park, "__slots__": ()})
    config = uvicorn.Config(app, port=port, loop="uvloop", http=http, lifespan="on", access_log=False,
                            timeout_keep_alive=130, log_level="warning")  # fmt: skip
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
