"""The SQLite store on a full disk: writes are 503 with Retry-After, outcomes of running jobs are
kept and stored once there is room again, and the WAL stays small. The store lives on a small
tmpfs mounted for the test (CI runs as root; elsewhere the test fails, saying so)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from api_app import build_app

from tarefa.store.sqlite import WAL_SIZE_LIMIT

pytestmark = pytest.mark.anyio


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the room)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@pytest.fixture
async def api(small_disk: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app, jobs, gates = build_app(f"sqlite:///{small_disk}/t.db", workers=8)
    jobs.lease_seconds = 1.5  # the recovery scan runs every lease / 3
    async with jobs.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c, gates


async def _record(client: httpx.AsyncClient, job_id: str, **params: Any) -> dict[str, Any]:
    answer = await client.get(f"/api/jobs/{job_id}", params=params)
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()["record"]
    return record


async def _until_refused(client: httpx.AsyncClient) -> httpx.Response:
    for n in range(200):
        answer = await client.post("/api/things", json={"name": f"big{n}", "data": "x" * 50_000})
        if answer.status_code != 202:
            return answer
    pytest.fail("the store kept taking writes on a full disk")


async def test_outcomes_wait_out_a_full_disk_and_writes_are_503(
    api: tuple[httpx.AsyncClient, Any], small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, gates = api
    ids = []
    for n in range(8):
        answer = await client.post(
            "/api/things",
            json={"name": f"t{n}", "gate": "go", "result": {"name": f"t{n}", "pad": "x" * 20_000}},
            params={"key": f"r{n}"},
        )
        ids.append(answer.json()["job"]["id"])
    for job_id in ids:
        while (await _record(client, job_id))["message"] != "waiting for gate go":
            await anyio.sleep(0.01)
    filler = fill(small_disk)
    refused = await _until_refused(client)  # the store's own slack (WAL, free pages) runs out too
    assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
    assert refused.json()["error"]["code"] == "store_unavailable"
    gates.open("go")
    await anyio.sleep(3)  # longer than the lease: the runner keeps the outcomes, the scan keeps the leases
    assert "keeping it and retrying" in caplog.text
    assert {(await _record(client, job_id))["state"] for job_id in ids} == {"running"}
    waiting = await client.get(f"/api/jobs/{ids[0]}", params={"poll_timeout": 1})
    assert waiting.json()["record"]["state"] == "running"
    filler.unlink()
    deadline = time.monotonic() + 15
    for job_id in ids:
        record = await _record(client, job_id)
        while record["state"] == "running":
            assert time.monotonic() < deadline, record
            record = await _record(client, job_id, poll_timeout=5, last_modified=record["last_modified"])
        assert record["state"] == "success" and record["result"]["name"] == f"t{ids.index(job_id)}"
    again = await client.post("/api/things", json={"name": "t0"}, params={"key": "r0"})
    assert again.status_code == 202  # the resource key is free: its job ended


async def test_the_wal_stays_small(api: tuple[httpx.AsyncClient, Any], small_disk: Path) -> None:
    client, _ = api
    for n in range(300):
        answer = await client.post("/api/things", json={"name": f"w{n}", "steps": 2}, params={"return_timeout": 10})
        assert answer.status_code == 200, answer.text
    wal = small_disk / "t.db-wal"
    assert wal.stat().st_size <= WAL_SIZE_LIMIT + 128 * 1024, wal.stat().st_size
