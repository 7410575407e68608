"""Requests per second of long polls on an ended job (they answer at once): a server without users
against the same server started with ``--users`` (HTTP Basic, the verified hash cached), measured
with ``wrk`` (2 threads, 32 connections) against real ``tarefa serve`` processes.

    python -m bench.auth_polls [--seconds 10]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PORT = 18611
USER, PASSWORD = "alice", "alice-pw"


def serve(directory: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tarefa", "serve", "--port", str(PORT), "--step-delay", "0",
         "--store", f"sqlite:///{directory}/bench-{time.monotonic_ns()}.db", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{PORT}/api/jobs", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("tarefa serve did not start")


def ended_job(auth: tuple[str, str] | None) -> str:
    url = f"http://127.0.0.1:{PORT}"
    job = httpx.post(f"{url}/api/hosts", json={"name": "h1", "address": "10.0.0.1"}, auth=auth).json()["job"]
    while job["state"] not in ("success", "failure"):
        job = httpx.get(f"{url}/api/jobs/{job['id']}", params={"poll_timeout": 5}, auth=auth).json()["record"]
    return str(job["id"])


def wrk(path: str, seconds: int, headers: dict[str, str]) -> float:
    script = "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", lua.name, f"http://127.0.0.1:{PORT}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(lua.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match is not None, out
    return float(match.group(1))


def measure(seconds: int) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        users = directory / "users.json"
        subprocess.run([sys.executable, "-m", "tarefa", "user", "add", str(users), USER, "--password-stdin"],
                       input=f"{PASSWORD}\n", text=True, check=True, capture_output=True)  # fmt: skip
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        for label, args, headers in (
            ("open (no users)", (), {}),
            ("--users, Basic auth", ("--users", str(users)), {"Authorization": f"Basic {token}"}),
        ):
            proc = serve(directory, *args)
            try:
                job_id = ended_job((USER, PASSWORD) if args else None)
                path = f"/api/jobs/{job_id}?poll_timeout=30"
                wrk(path, 2, headers)  # warm up
                results[label] = wrk(path, seconds, headers)
            finally:
                proc.terminate()
                proc.wait(30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    results = measure(parser.parse_args().seconds)
    baseline = next(iter(results.values()))
    for label, rate in results.items():
        print(f"{label:24} {rate:9.0f} requests/s  ({rate / baseline:.2f}x)")


if __name__ == "__main__":
    main()
