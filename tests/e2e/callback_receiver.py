"""A real HTTP receiver of callbacks on 127.0.0.1 (a free port), run by a test in a thread.

Each path answers from its own script of statuses (the last one repeats); ``hold(path)`` makes
the next requests to that path wait, unanswered, until ``release(path)``. Every request is kept
(with the time it arrived), so a test can verify its signature and count retries.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when the request had arrived in full

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.holds: dict[str, threading.Event] = {}
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        self.scripts[path] = list(statuses)

    def hold(self, path: str) -> None:
        self.holds[path] = threading.Event()

    def release(self, path: str) -> None:
        self.holds.pop(path).set()

    def to(self, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(got := [r for r in self.requests if r.path == path]) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(got)} of {count} callbacks to {path} arrived in {timeout} s"
                self._changed.wait(left)
            return got

    def _record(self, received: Received) -> int:
        with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
            script = self.scripts.get(received.path, [200])
            return script.pop(0) if len(script) > 1 else script[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver._record(Received(self.path, dict(self.headers.items()), body, time.time()))
                held = receiver.holds.get(self.path)
                if held is not None:
                    held.wait(120)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for event in self.holds.values():
            event.set()
        self._server.shutdown()
        self._server.server_close()
