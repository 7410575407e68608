"""The load driver that every client program shares. Standard library only: it runs in each
system's own virtual environment.

A client program is ``python -m bench.clients.<system> '<spec as JSON>'``. It builds an async
``submit_and_wait(kind, args)`` for its system (start one job, wait for its end the way that
system's users do, return the job's result) and hands it to :func:`main`, which runs the spec:

- ``jobs`` jobs, ``concurrency`` callers at once, each caller submitting then waiting, again and
  again, until the jobs or the ``budget_s`` seconds are used up;
- ``body``: ``{"kind": "noop"}`` (the job returns ``{"i": index}``) or ``{"kind": "sleep",
  "seconds": S, "jitter": J}`` (the job sleeps S plus a fixed pseudo-random 0..J seconds and
  returns the time it ended).

It prints one JSON object: per job ``[submitted, seen, ended]`` (wall-clock seconds; ``ended``
is the job's own end time for sleeps), the errors, and the client process's CPU and peak memory.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

SubmitAndWait = Callable[[str, dict[str, Any]], Awaitable[Any]]
Opener = Callable[[dict[str, Any]], Awaitable[tuple[SubmitAndWait, Callable[[], Awaitable[None]]]]]


def job_args(body: dict[str, Any], index: int) -> dict[str, Any]:
    """The arguments of job ``index``: the same in every system."""
    if body["kind"] == "noop":
        return {"i": index}
    jitter = random.Random(index).uniform(0.0, body.get("jitter", 0.0))
    return {"seconds": body["seconds"] + jitter}


def check(body: dict[str, Any], args: dict[str, Any], result: Any) -> float | None:
    """The job's end time (sleeps), after checking that the result is the expected one."""
    if body["kind"] == "noop":
        if result != args:
            raise AssertionError(f"noop returned {result!r}, expected {args!r}")
        return None
    if not isinstance(result, int | float):
        raise AssertionError(f"sleep returned {result!r}, expected a time")
    return float(result)


async def run(spec: dict[str, Any], call: SubmitAndWait) -> dict[str, Any]:
    body, budget = spec["body"], spec.get("budget_s", 3600.0)
    records: list[list[float | None]] = []
    errors: list[str] = []
    indexes: Iterator[int] = iter(range(spec["jobs"]))
    stop_at = time.monotonic() + budget

    async def caller() -> None:
        for index in indexes:
            if time.monotonic() > stop_at:
                return
            args = job_args(body, index)
            submitted = time.time()
            try:
                ended = check(body, args, await call(body["kind"], args))
            except Exception as exc:
                errors.append(f"job {index}: {type(exc).__name__}: {exc}")
                continue
            records.append([submitted, time.time(), ended])

    started = time.time()
    await asyncio.gather(*(caller() for _ in range(spec["concurrency"])))
    return {"records": records, "errors": errors[:20], "error_count": len(errors), "started": started}


def own_usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}


def main(opener: Opener) -> None:
    """Run the spec in ``sys.argv[1]`` with the system that ``opener`` opens; print the JSON."""
    spec = json.loads(sys.argv[1])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    before = own_usage()  # the imports are not the workload's

    async def go() -> dict[str, Any]:
        call, close = await opener(spec.get("options", {}))
        try:
            return await run(spec, call)
        finally:
            await close()

    try:
        outcome = asyncio.run(go())
    except Exception:
        outcome = {"fatal": traceback.format_exc()}
    after = own_usage()
    client = {"cpu_s": after["cpu_s"] - before["cpu_s"], "peak_rss_kb": after["peak_rss_kb"]}
    print(json.dumps({**outcome, "client": client}))
