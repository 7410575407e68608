"""A ``tarefa serve`` with users (and TLS): made users files, certificates, and a started process."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

from conftest import TAREFA, free_port

USERS = {"alice": ("alice-pw", False), "bob": ("bob-pw", False), "root": ("root-pw", True)}


def run_cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TAREFA, *args], input=stdin, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def make_users_file(path: Path) -> Path:
    """The users of :data:`USERS`, written by the real ``tarefa user add``."""
    for name, (password, admin) in USERS.items():
        result = run_cli("user", "add", str(path), name, "--password-stdin", *(["--admin"] if admin else []),
                         stdin=password + "\n")  # fmt: skip
        assert result.returncode == 0, result.stderr
    return path


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, *hosts: str) -> Certificates:
    """A CA made for the test and a server certificate it signed for ``hosts``."""
    authority = trustme.CA()
    issued = authority.issue_cert(*hosts)
    ca, cert, key = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    authority.cert_pem.write_to_path(str(ca))
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return Certificates(ca, cert, key)


@dataclass
class Secured:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    verify: ssl.SSLContext | bool

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_secured(directory: Path, *args: str, host: str = "127.0.0.1", scheme: str = "http",
                  verify: ssl.SSLContext | bool = True) -> Secured:  # fmt: skip
    """``tarefa serve --host host args``, waiting until it answers anything over HTTP(S)."""
    port = free_port()
    log_path = directory / f"serve-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*TAREFA, "serve", "--host", host, "--port", str(port), "--step-delay", "0.01", *args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    server = Secured(proc, f"{scheme}://{host}:{port}", log_path, verify)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tarefa serve exited with {proc.returncode}:\n{server.log()}")
        try:
            httpx.get(f"{server.url}/api/jobs", timeout=1.0, verify=verify)
            return server
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"tarefa serve did not start:\n{server.log()}")


def stop(server: Secured) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(20)


def servers() -> Iterator[list[Secured]]:
    """For a fixture: the list to put started servers in; they are stopped afterwards."""
    started: list[Secured] = []
    yield started
    for server in started:
        stop(server)
