"""What the dashboard costs the server: load time, and server CPU with 10 dashboards open.

    python -m bench.dashboard_cost [--jobs 1000] [--pages 10] [--seconds 30]

Starts ``tarefa serve`` (SQLite, reference service), stores ``--jobs`` finished jobs, then reads the
server process's utime+stime from /proc over ``--seconds`` in four phases: idle with no dashboard,
idle with ``--pages`` headless Chromium pages open, and both again while a job runs every 2 s (each
a few visible changes). Needs Chromium on PATH and Playwright (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Browser, sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(tmp: str, port: int, step_delay: float) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tarefa", "serve", "--port", str(port), "--store", f"sqlite:///{tmp}/d.db",
               "--step-delay", str(step_delay)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("tarefa serve did not start")


def fill(url: str, jobs: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(jobs):
            client.post("/api/hosts", json={"name": f"seed-{i}", "address": "10.0.0.1"}).raise_for_status()
        while client.get("/api/jobs", params={"state": "queued|running", "max_records": 1}).json()["num_records"]:
            time.sleep(0.5)


def measure(pid: int, seconds: float, during: Callable[[threading.Event], None] | None = None) -> float:
    stop = threading.Event()
    worker = threading.Thread(target=during, args=(stop,)) if during else None
    before = cpu_seconds(pid)
    if worker:
        worker.start()
    time.sleep(seconds)
    after = cpu_seconds(pid)
    stop.set()
    if worker:
        worker.join()
    return after - before


def trickle(url: str) -> Callable[[threading.Event], None]:
    def run(stop: threading.Event) -> None:
        n = 0
        while not stop.wait(2.0):
            n += 1
            httpx.post(f"{url}/api/hosts", json={"name": f"live-{time.time_ns()}-{n}", "address": "10.0.0.1"})

    return run


def open_pages(browser: Browser, url: str, pages: int) -> tuple[list[object], list[float], list[float]]:
    """The pages, the time from goto until the first row shows (seen from here), and the same
    from the page's own navigation start (``performance.now()``, no driver overhead)."""
    opened, load_times, in_page = [], [], []
    for _ in range(pages):
        page = browser.new_page()
        started = time.perf_counter()
        page.goto(f"{url}/")
        page.wait_for_selector("#jobs tbody tr")
        load_times.append(time.perf_counter() - started)
        in_page.append(page.evaluate("performance.now()") / 1000)
        opened.append(page)
    return opened, load_times, in_page


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    options = parser.parse_args()
    chromium = shutil.which("chromium") or sys.exit("needs chromium on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        seeder = start(tmp, port, 0.0)  # the stored jobs run at once; then the measured server
        fill(url, options.jobs)
        seeder.terminate()
        seeder.wait(30)
        proc = start(tmp, port, 0.5)
        try:
            idle = measure(proc.pid, options.seconds)
            busy = measure(proc.pid, options.seconds, trickle(url))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
                pages, loads, in_page = open_pages(browser, url, options.pages)
                watched_idle = measure(proc.pid, options.seconds)
                watched_busy = measure(proc.pid, options.seconds, trickle(url))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{options.jobs} jobs in the store, {len(pages)} dashboards, {options.seconds:.0f} s per phase")
    print(f"load time (goto until the first row shows): min {min(loads)*1000:.0f} ms, "
          f"median {sorted(loads)[len(loads)//2]*1000:.0f} ms, max {max(loads)*1000:.0f} ms; in the page "
          f"(performance.now() at the first row): median {sorted(in_page)[len(in_page)//2]*1000:.0f} ms")  # fmt: skip
    print(f"server CPU, nothing changing: {idle:.2f} s without dashboards, {watched_idle:.2f} s with them")
    print(f"server CPU, a job every 2 s:  {busy:.2f} s without dashboards, {watched_busy:.2f} s with them")


if __name__ == "__main__":
    main()
