"""The HTTP server alone (issue 11, point 3): what each ASGI server costs per request and per held
request, with the same raw ASGI app (``bench/servers/raw_hold.py``) and the same lean caller.

    python -m bench.http_servers [--seconds 5] [--held 2000] [--rounds 2] [--servers KEY,...]

Servers: uvicorn (uvloop + httptools, tarefa's default), uvicorn with tarefa's protocol
(``tarefa.http.protocol``, as ``tarefa serve`` runs it), uvicorn (asyncio + h11) and granian (its
Rust HTTP stack, one worker), installed with pip into ``bench/.venvs/servers``. For each, one fresh process per round:

- ``rps_c32`` and ``server_us_per_request``: 32 keep-alive connections send ``GET /`` (answered at
  once) for ``--seconds``; the server's CPU (``/proc/<pid>/stat``) divided by the requests;
- ``p50_us_c1``: one connection, sequential requests: the round trip's median;
- ``kb_per_held``: ``--held`` connections each hold a request until a common instant; the server's
  ``Pss`` with them held minus before (after 32 requests answered at once), divided by them.

The caller is a bare asyncio protocol on uvloop in this process (about 20-50 µs per request), so
that the figures are the server's. Prints a Markdown table; ``--json`` prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvloop
from bench import venvs
from bench.machine import load_average
from bench.procs import (
    cpu_seconds,
    descendants,
    free_port,
    memory_kb,
    port_open,
    raise_fd_limit,
    start,
    stop,
    wait_for,  # fmt: skip
)
from bench.systems.base import DEV_PYTHON, bench_env

ROOT = Path(__file__).resolve().parents[1]
APP = "bench.servers.raw_hold:app"
REQUEST = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    venv: str | None  # None: the dev venv

    def command(self, python: str, port: int) -> list[str]:
        if self.key == "uvicorn":
            return [python, "-m", "bench.servers.raw_hold", str(port), "uvicorn"]
        if self.key == "uvicorn-tarefa":
            return [python, "-m", "bench.servers.raw_hold", str(port), "tarefa"]
        if self.key == "uvicorn-h11":
            return [python, "-m", "uvicorn", APP, "--port", str(port), "--loop", "asyncio", "--http", "h11",
                    "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "130"]  # fmt: skip
        if self.key == "granian":
            return [python, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning", APP]  # fmt: skip
        raise ValueError(self.key)


SERVERS = [
    Server("uvicorn", "uvicorn, uvloop + httptools", None),
    Server("uvicorn-tarefa", "uvicorn + tarefa's protocol (tarefa serve)", None),
    Server("uvicorn-h11", "uvicorn, asyncio + h11", None),
    Server("granian", "granian, 1 worker, uvloop", "servers"),
]


class Caller(asyncio.Protocol):
    """One keep-alive connection that sends a request each time the last answer is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answered: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        self.buffer = rest[length:]
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    async def ask(self, request: bytes = REQUEST) -> None:
        self.answered = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        await self.answered


async def _connect(port: int) -> Caller:
    loop = asyncio.get_running_loop()
    _, caller = await loop.create_connection(Caller, "127.0.0.1", port)
    return caller


async def _throughput(port: int, pid: int, seconds: float, connections: int) -> tuple[float, float]:
    callers = [await _connect(port) for _ in range(connections)]
    for caller in callers:  # warm up
        await caller.ask()
    done = 0
    stop_at = time.monotonic() + seconds

    async def loop_one(caller: Caller) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await caller.ask()
            done += 1

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(loop_one(c) for c in callers))
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    for caller in callers:
        assert caller.transport is not None
        caller.transport.close()
    return done / (t1 - t0), (cpu1 - cpu0) / done * 1e6


async def _latency(port: int, count: int = 2000) -> float:
    caller = await _connect(port)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await caller.ask()
        times.append(time.perf_counter() - t0)
    assert caller.transport is not None
    caller.transport.close()
    return statistics.median(times[100:]) * 1e6


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return memory_kb(pid, "VmRSS")


async def _held(port: int, pid: int, count: int) -> float:
    # a few requests answered at once first (imports, caches); then the held ones grow the process
    warm = [await _connect(port) for _ in range(32)]
    await asyncio.gather(*(c.ask() for c in warm))
    for caller in warm:
        assert caller.transport is not None
        caller.transport.close()
    await asyncio.sleep(1.0)
    before = _pss_kb(pid)
    until = time.time() + 5.0 + count / 1000
    request = f"GET /?until={until} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()
    callers = [await _connect(port) for _ in range(count)]
    waits = [asyncio.ensure_future(c.ask(request)) for c in callers]
    await asyncio.sleep(max(0.5, until - time.time() - 1.5))
    held = _pss_kb(pid)
    await asyncio.gather(*waits)
    for caller in callers:
        assert caller.transport is not None
        caller.transport.close()
    return (held - before) / count


@contextmanager
def running(server: Server, workdir: Path) -> Iterator[tuple[int, int]]:
    """The server's pid and port, while it runs."""
    python = DEV_PYTHON if server.venv is None else str(venvs.ensure(server.venv))
    port = free_port()
    log = workdir / f"{server.key}-{port}.log"
    proc = start(server.command(python, port), env={**bench_env(), "PYTHONPATH": str(ROOT)}, log=log)
    try:
        wait_for(lambda: port_open(port), 30, server.key, proc, log)
        time.sleep(0.5)
        children = [pid for pid in descendants(proc.pid) if pid != proc.pid]
        yield (children[-1] if children else proc.pid), port  # granian serves from a child process
    finally:
        stop(proc)


def measure(server: Server, workdir: Path, seconds: float, held: int) -> dict[str, float]:
    with running(server, workdir) as (pid, port):
        rps, us = uvloop.run(_throughput(port, pid, seconds, 32))
        return {
            "rps_c32": rps,
            "server_us_per_request": us,
            "p50_us_c1": uvloop.run(_latency(port)),
            "kb_per_held": uvloop.run(_held(port, pid, held)),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--held", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", default=",".join(s.key for s in SERVERS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit()
    wanted = [s for s in SERVERS if s.key in args.servers.split(",")]
    results: dict[str, list[dict[str, float]]] = {s.key: [] for s in wanted}
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-servers-"))
    for _ in range(args.rounds):
        for server in wanted:  # alternate, so that a noisy moment hits every server
            try:
                results[server.key].append(measure(server, workdir, args.seconds, args.held))
            except Exception as exc:  # a server that cannot run here is reported, not fatal
                print(f"{server.key}: {type(exc).__name__}: {exc}", file=sys.stderr)
    medians = {key: {m: statistics.median(r[m] for r in runs) for m in runs[0]}
               for key, runs in results.items() if runs}  # fmt: skip
    if args.json:
        print(json.dumps({"rounds": results, "medians": medians, "load": load_average()}))
        return
    print(f"load average before the last round ended: {load_average()}")
    print("| server | req/s, 32 connections | server CPU µs/request | p50 µs, 1 connection | KB per held request |")
    print("|---|---|---|---|---|")
    for server in wanted:
        if server.key not in medians:
            print(f"| {server.label} | not available | | | |")
            continue
        f = medians[server.key]
        print(f"| {server.label} | {f['rps_c32']:,.0f} | {f['server_us_per_request']:.0f} | "
              f"{f['p50_us_c1']:.0f} | {f['kb_per_held']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
