"""The floor of tarefa's job path (issue 11): a raw ASGI app on uvicorn (uvloop, httptools) that
does for each ``POST /`` what an asynchronous call that is answered when its no-op job ends must
do at least — two durable SQLite commits (the job accepted and claimed; the job finished), each
made by one writer thread that commits every request waiting at once in one transaction (group
commit), then the answer. No framework, no validation, no job model.

    python -m bench.servers.floor_jobs PORT DB_PATH
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import uvicorn

Work = tuple[str, str, asyncio.Future[None]]


class Writer(threading.Thread):
    """One connection, synchronous=FULL; every waiting write of a wake-up in one commit."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(daemon=True, name="floor-writer")
        self.loop = loop
        self.inbox: queue.SimpleQueue[Work] = queue.SimpleQueue()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT, body BLOB)")

    def run(self) -> None:
        while True:
            batch = [self.inbox.get()]
            while True:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self.db.execute("BEGIN IMMEDIATE")
            for job_id, state, _ in batch:
                self.db.execute("INSERT INTO jobs VALUES (?, ?, '') ON CONFLICT (id) DO UPDATE SET state = ?",
                                (job_id, state, state))  # fmt: skip
            self.db.execute("COMMIT")
            self.loop.call_soon_threadsafe(_settle, [future for _, _, future in batch])

    async def write(self, job_id: str, state: str) -> None:
        future = self.loop.create_future()
        self.inbox.put((job_id, state, future))
        await future


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


WRITER: Writer | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global WRITER
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                WRITER = Writer(sys.argv[2], asyncio.get_running_loop())
                WRITER.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert WRITER is not None
    job_id = str(uuid.uuid4())
    await WRITER.write(job_id, "running")  # accepted and claimed: durable before the work runs
    result = orjson.loads(body) if body else {}
    if "seconds" in result:  # W3's job: a sleep, answered with the time it ended
        await asyncio.sleep(result["seconds"])
        result = time.time()
    await WRITER.write(job_id, "success")
    data = orjson.dumps({"id": job_id, "state": "success", "result": result})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})  # fmt: skip


if __name__ == "__main__":
    config = uvicorn.Config(app, port=int(sys.argv[1]), loop="uvloop", http="httptools", lifespan="on",
                            access_log=False, log_level="warning")  # fmt: skip
    uvicorn.Server(config).run()
