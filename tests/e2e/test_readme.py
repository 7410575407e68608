"""The README is a path a newcomer can follow: its blocks run, in order, twice, as written.

Every fenced block of README.md is preceded by a comment saying how it is run:

- ``<!-- readme-test: serve -->``: a ``tarefa serve`` command, started in the background and
  waited for. The quick start's ``python3 -m venv .venv && . .venv/bin/activate && pip install
  -e . && tarefa serve`` is run from its ``tarefa serve`` on: this test already runs in an
  environment where tarefa is installed (from this checkout), so creating a second one would only
  cost minutes and the network. A command without ``--port`` gets ``--port`` with a free port, and
  the reference service gets ``--step-delay 0.05`` so that its jobs take a fraction of a second.
- ``<!-- readme-test: sh -->``: run with ``bash -euo pipefail``; must exit 0.
- ``<!-- readme-test: python -->``: run with this interpreter; must exit 0.
- ``<!-- readme-test: file NAME -->``: written to NAME (e.g. the FastAPI example, ``myservice.py``).
- ``<!-- readme-test: skip (REASON) -->``: not run (output shown, configuration, the test suite).

Ports: the README's 8080 and 8081 are replaced by free ports in every block, and the CLI's
default ``--url`` (http://127.0.0.1:8080) is pointed at the first of them through ``TAREFA_URL``. Everything runs in
one temporary folder (so ``./tarefa.db`` is fresh) with no ``TAREFA_*`` variable and no config
file. The whole README is run twice: the second time in the same folder against servers started
again on the same stores, which is what a newcomer who tries the examples twice meets.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (?P<kind>\w+)(?P<arg>[^>]*?)-->\n```(?P<lang>[\w-]*)\n(?P<body>.*?)\n```", re.S)
FENCE = re.compile(r"^```[\w-]*$", re.M)
BLOCK_TIMEOUT = 90.0


@dataclass(frozen=True)
class Block:
    kind: str
    arg: str
    body: str


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = [Block(m["kind"], m["arg"].strip(), m["body"]) for m in BLOCK.finditer(text)]
    opening_fences = len(FENCE.findall(text)) // 2
    assert len(blocks) == opening_fences, "every fenced block of README.md needs a readme-test comment"
    return blocks


def test_every_block_is_marked_and_the_runnable_ones_are_there() -> None:
    kinds = [block.kind for block in readme_blocks()]
    assert set(kinds) <= {"serve", "sh", "python", "file", "skip"}
    assert kinds.count("serve") == 2 and kinds.count("sh") >= 4 and "python" in kinds and "file" in kinds


def test_the_readme_runs_twice_in_a_row(tmp_path: Path) -> None:
    ports = {"8080": str(free_port()), "8081": str(free_port())}
    env = {**clean_env(tmp_path), "TAREFA_URL": f"http://127.0.0.1:{ports['8080']}"}
    for run in (1, 2):
        with servers() as started:
            for number, block in enumerate(readme_blocks()):
                body = substitute(block.body, ports)
                where = f"run {run}, README block {number} ({block.kind})"
                run_block(block, body, tmp_path, env, started, ports, where)


def clean_env(folder: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TAREFA_")}
    env["TAREFA_CONFIG"] = str(folder / "no-config.toml")  # no config file of the user's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    return env


def substitute(body: str, ports: dict[str, str]) -> str:
    for readme_port, port in ports.items():
        body = body.replace(readme_port, port)
    return body


def run_block(
    block: Block,
    body: str,
    folder: Path,
    env: dict[str, str],
    started: list[subprocess.Popen[bytes]],
    ports: dict[str, str],
    where: str,
) -> None:
    if block.kind == "file":
        (folder / block.arg).write_text(body + "\n")
    elif block.kind == "serve":
        started.append(start_server(body, folder, env, ports["8080"], where))
    elif block.kind in ("sh", "python"):
        command = ["bash", "-euo", "pipefail", "-c", body] if block.kind == "sh" else [sys.executable, "-c", body]
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        assert done.returncode == 0, f"{where} exited {done.returncode}:\n{body}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr, f"{where}:\n{done.stdout}\n{done.stderr}"


def start_server(
    body: str, folder: Path, env: dict[str, str], default_port: str, where: str
) -> subprocess.Popen[bytes]:
    command = body.strip().split("&&")[-1].strip()
    assert command.startswith("tarefa serve"), f"{where}: a serve block must end with a tarefa serve command"
    if "--port" not in command:
        command += f" --port {default_port}"
    if "--app" not in command:
        command += " --step-delay 0.05"
    port = re.search(r"--port (\d+)", command)
    assert port is not None
    log = (folder / f"serve-{port[1]}.log").open("ab")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    wait_until_up(f"http://127.0.0.1:{port[1]}/api/jobs", proc, folder / f"serve-{port[1]}.log", where)
    return proc


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, where: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{where}: tarefa serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{where}: {url} did not answer in {timeout} s:\n{log.read_text()}")


@contextmanager
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The servers the blocks start; always stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_the_python_blocks_of_the_docs_are_valid_python() -> None:
    docs = README.parent / "docs"
    for page in sorted(docs.glob("*.md")):
        for number, match in enumerate(re.finditer(r"```python\n(.*?)\n```", page.read_text(), re.S)):
            compile(match[1], f"{page.name} python block {number}", "exec")  # a SyntaxError fails the test
