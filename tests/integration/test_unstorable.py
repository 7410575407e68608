"""Input that validates but no store can keep gets the same answer on every store: a 400 naming
the field, and nothing stored (issue: NUL was a 500 on PostgreSQL, NaN silently became null)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_app import build_app

pytestmark = pytest.mark.anyio

BAD_BODIES = [
    (b'{"name": "nul \\u0000 byte"}', "name", "NUL"),
    (b'{"data": {"note": "nul \\u0000"}}', "data.note", "NUL"),
    (b'{"data": ["ok", "\\udfff"]}', "data.1", "surrogate"),
    (b'{"data": 1180591620717411303424}', "data", "64 bits"),
    (b'{"data": -9223372036854775809}', "data", "64 bits"),
    (b'{"data": NaN}', "data", "NaN"),
    (b'{"data": [Infinity]}', "data.0", "NaN or infinite"),
    (b'{"data": {"big": 1e400}}', "data.big", "NaN or infinite"),
]


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app, jobs, _ = build_app(store_url)
    async with jobs.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def _jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = (await client.get("/api/jobs")).json()["records"]
    return records


@pytest.mark.parametrize(("body", "target", "why"), BAD_BODIES)
async def test_unstorable_input_is_400_naming_the_field_and_stores_nothing(
    client: httpx.AsyncClient, body: bytes, target: str, why: str
) -> None:
    response = await client.post("/api/things", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_body" and error["target"] == target and why in error["message"]
    assert await _jobs(client) == []


async def test_storable_extremes_are_kept_faithfully(client: httpx.AsyncClient) -> None:
    data = {"max": 2**64 - 1, "min": -(2**63), "tiny": 5e-324, "unicode": "chave-ñ-✓ 🚀", "nested": [[[]]]}
    response = await client.post("/api/things", json={"data": data, "result": data})
    assert response.status_code == 202, response.text
    job_id = response.json()["job"]["id"]
    record = await _until_terminal(client, job_id)
    assert record["state"] == "success" and record["result"] == data


async def test_ids_and_filters_no_store_can_hold_find_nothing(client: httpx.AsyncClient) -> None:
    for path in ("/api/jobs/a%00b", "/api/jobs/%ED%BF%BF", "/api/jobs/a%00b/events"):
        response = await client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", path
    assert (await client.patch("/api/jobs/a%00b", params={"action": "cancel"})).status_code == 404
    assert (await client.delete("/api/jobs/a%00b")).status_code == 404
    assert (await client.get("/api/jobs/a%00b", params={"poll_timeout": 5})).status_code == 404
    listed = await client.get("/api/jobs", params={"operation": "thing\x00make"})  # not an operation name
    assert listed.status_code == 400 and listed.json()["error"]["target"] == "operation"


async def test_an_unstorable_result_ends_the_job_with_internal_error(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/api/things", json={"huge_result": True})).json()["job"]["id"]
    record = await _until_terminal(client, job_id)
    assert record["state"] == "failure" and record["error"]["code"] == "internal_error"
    assert "64 bits" in record["error"]["message"]


async def test_a_status_line_with_a_nul_is_stored_with_a_replacement_character(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/api/things", json={"say": "half{NUL}way"})).json()["job"]["id"]
    await _until_terminal(client, job_id)
    events = (await client.get(f"/api/jobs/{job_id}/events")).json()["records"]
    assert "half\ufffdway" in [event["message"] for event in events]


async def _until_terminal(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    record: dict[str, Any] = (await client.get(f"/api/jobs/{job_id}")).json()["record"]
    while record["state"] not in ("success", "failure"):
        assert time.monotonic() < deadline, record
        params = {"poll_timeout": 5, "last_modified": record["last_modified"]}
        record = (await client.get(f"/api/jobs/{job_id}", params=params)).json()["record"]
    return record
