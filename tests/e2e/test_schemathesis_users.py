"""Schemathesis against a live ``tarefa serve --users``: generated requests signed in as a user;
no answer is a 5xx, every answer is documented (401 included) and matches its schema, and the
server does not ignore authentication (a request without credentials is a 401)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from secured import Secured, make_users_file, servers, start_secured

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "response_headers_conformance,ignored_auth"
)


@pytest.fixture
def started() -> Iterator[list[Secured]]:
    yield from servers()


def test_generated_requests_against_a_server_with_users(tmp_path: Path, started: list[Secured]) -> None:
    users = make_users_file(tmp_path / "users.json")
    server = start_secured(tmp_path, "--users", str(users), "--store", f"sqlite:///{tmp_path}/t.db")
    started.append(server)
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "--auth", "alice:alice-pw",
         "--max-examples", "25", "--checks", CHECKS, "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
    )  # fmt: skip
    summary = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert result.returncode == 0 and summary is not None, result.stdout[-6000:] + result.stderr[-2000:]
    print(f"schemathesis with users: {summary.group(0)}")
    assert int(summary.group(1)) >= 300 and " 500 " not in server.log()
