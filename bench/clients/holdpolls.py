"""A load generator light enough for 10,000 waiting requests: raw asyncio sockets, one connection
per waiting request, a hand-written HTTP/1.1 request, nothing parsed but the status line, the
``Content-Length`` and (for polls) whether the body says the job ended. Standard library only.

Spec (JSON on stdin): ``port``, ``paths`` (one request per path), ``mode`` = ``hold`` (one request,
answered when the server decides) or ``poll`` (the request again every ``interval`` seconds on the
same connection until the body contains ``done_marker``), ``connect_batch`` (connections opened at
once), ``timeout_s``. Prints ``held <n>`` once every request is written, then one JSON object:
per answer its receipt time, the errors, and the client's CPU time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

HEADER_END = b"\r\n\r\n"


class Waiter(asyncio.Protocol):
    """One connection: sends its request, reads answers, reports the final one."""

    def __init__(self, request: bytes, spec: dict[str, Any], finished: asyncio.Future[tuple[float, int]]) -> None:
        self.request = request
        self.poll = spec["mode"] == "poll"
        self.interval = float(spec.get("interval", 1.0))
        self.marker = spec.get("done_marker", "").encode()
        self.finished = finished
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.requests += 1
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(HEADER_END)
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                       if line.lower().startswith("content-length:")), 0)  # fmt: skip
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
        status = int(head.split(" ", 2)[1])
        if self.poll and status == 200 and self.marker not in body:
            asyncio.get_running_loop().call_later(self.interval, self.send)
            return
        if not self.finished.done():
            self.finished.set_result((time.time(), status))
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_exception(ConnectionError(f"connection lost: {exc}"))


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    port, paths = spec["port"], spec["paths"]
    futures: list[asyncio.Future[tuple[float, int]]] = []
    waiters: list[Waiter] = []
    batch = int(spec.get("connect_batch", 500))
    for start in range(0, len(paths), batch):
        chunk = []
        for path in paths[start : start + batch]:
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()
            future: asyncio.Future[tuple[float, int]] = loop.create_future()
            waiter = Waiter(request, spec, future)
            futures.append(future)
            waiters.append(waiter)
            chunk.append(loop.create_connection(lambda w=waiter: w, "127.0.0.1", port))  # type: ignore[misc]
        await asyncio.gather(*chunk)
    print(f"held {len(paths)}", flush=True)
    done, pending = await asyncio.wait(futures, timeout=spec.get("timeout_s", 180))
    received, errors = [], []
    for future in done:
        if future.exception() is not None:
            errors.append(str(future.exception()))
        elif future.result()[1] != 200:
            errors.append(f"status {future.result()[1]}")
        else:
            received.append(future.result()[0])
    errors += ["no answer in time"] * len(pending)
    return {"received": received, "errors": errors[:10], "error_count": len(errors),
            "requests": sum(w.requests for w in waiters)}  # fmt: skip


def main() -> None:
    spec = json.loads(sys.stdin.read())
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    outcome = asyncio.run(hold(spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    outcome["client"] = {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
