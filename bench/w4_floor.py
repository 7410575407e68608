"""W4's floor on this machine (issue 11): 1,000 callers at once, each one POST answered 3 s after it
arrives, through the layers below tarefa — aiohttp's client (one shared session, no connection limit, as
tarefa's ``AsyncClient`` uses it) and uvicorn (uvloop, httptools) with a raw ASGI handler.

    python -m bench.w4_floor [--callers 1000] [--seconds 3] [--runs 3] [--durable]

With ``--durable`` the server is ``bench.servers.floor_jobs`` instead: each call is also two durable
SQLite group commits (accepted and claimed, then finished) around its sleep, as tarefa's must be —
the floor of W4 for a server that loses no job.

Prints per run: the wall time until every answer is in, the client's CPU (from its first call on, imports
left out, as ``bench.run``'s driver counts a client), the server's CPU while the client ran (``/proc``), their sum,
and when the requests reached the server (seconds after the callers started: the client's burst).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds, free_port, own_cpu_seconds
from bench.systems.base import DEV_PYTHON, bench_env


def serve(port: int, seconds: float, arrivals_file: str) -> None:
    import uvicorn

    arrivals: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        arrivals.append(time.time())
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(seconds)
        headers = [(b"content-length", b"2"), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    def dump(*_: Any) -> None:
        with open(arrivals_file, "w") as out:
            json.dump(arrivals, out)

    signal.signal(signal.SIGUSR1, dump)
    config = uvicorn.Config(app, port=port, loop="uvloop", http="httptools", log_level="warning",
                            timeout_keep_alive=130)  # fmt: skip
    uvicorn.Server(config).run()


async def call(port: int, callers: int, seconds: float) -> dict[str, float]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/api/sleep?return_timeout=120"
    before = own_cpu_seconds()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.time()

        async def one() -> float:
            async with session.post(url, json={"seconds": seconds}) as answer:
                await answer.read()
            return time.time()

        ends = await asyncio.gather(*(one() for _ in range(callers)))
    cpu = own_cpu_seconds() - before
    return {"started": started, "wall_s": max(ends) - started, "client_cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--durable", action="store_true", help="two durable commits per call (floor_jobs)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--call", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--arrivals", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        return serve(args.serve, args.seconds, args.arrivals)
    if args.call:
        print(json.dumps(asyncio.run(call(args.call, args.callers, args.seconds))))
        return
    for _ in range(args.runs):
        port = free_port()
        with tempfile.NamedTemporaryFile(suffix=".json") as arrivals_file:
            common = ["--seconds", str(args.seconds), "--arrivals", arrivals_file.name]
            serving = [DEV_PYTHON, "-m", "bench.w4_floor", "--serve", str(port), *common]
            if args.durable:
                serving = [DEV_PYTHON, "-m", "bench.servers.floor_jobs", str(port), arrivals_file.name + ".db"]
            server = subprocess.Popen(serving, env=bench_env())
            try:
                time.sleep(2)
                client = [DEV_PYTHON, "-m", "bench.w4_floor", "--call", str(port), "--callers", str(args.callers),
                          *common]  # fmt: skip
                server_before = cpu_seconds(server.pid)
                done = subprocess.run(client, env=bench_env(), capture_output=True, text=True, check=True)
                server_cpu = cpu_seconds(server.pid) - server_before
                outcome = json.loads(done.stdout.strip().splitlines()[-1])
                arrivals = [0.0]  # floor_jobs does not record them
                if not args.durable:
                    os.kill(server.pid, signal.SIGUSR1)
                    time.sleep(0.3)
                    with open(arrivals_file.name) as read:
                        arrivals = sorted(at - outcome["started"] for at in json.load(read))
            finally:
                server.terminate()
                server.wait()
                for suffix in (".db", ".db-wal", ".db-shm"):
                    Path(arrivals_file.name + suffix).unlink(missing_ok=True)
        middle = arrivals[len(arrivals) // 2]
        print(json.dumps({"wall_s": round(outcome["wall_s"], 3), "client_cpu_s": round(outcome["client_cpu_s"], 2),
                          "server_cpu_s": round(server_cpu, 2),
                          "cpu_s": round(outcome["client_cpu_s"] + server_cpu, 2),
                          "arrivals_s": [round(arrivals[0], 3), round(middle, 3), round(arrivals[-1], 3)],
                          "load": os.getloadavg()[0]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
