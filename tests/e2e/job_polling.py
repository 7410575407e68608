"""Reading and following jobs over real HTTP, shared by the e2e test modules."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = ("success", "failure")


def read_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()["record"]  # type: ignore[no-any-return]


def follow(client: httpx.Client, job: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Long-poll ``job`` until it is terminal."""
    deadline = time.monotonic() + timeout
    while job["state"] not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job['id']} did not end in {timeout} s: {job}"
        answer = client.get(
            f"/api/jobs/{job['id']}", params={"poll_timeout": 10, "last_modified": job["last_modified"]}
        )
        assert answer.status_code == 200, answer.text
        job = answer.json()["record"]
    return job
