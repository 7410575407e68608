"""Access (SPEC §7) on every store: ownership on every job route (no route leaks another user's job,
its id or its existence), 401, per-user Idempotency-Key, 409 naming only a visible holder, limits."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_app import build_app

from tarefa import Tarefa
from tarefa.http.access import users_file_identity
from tarefa.users import PasswordChecker, User, UserEntry, hash_password

pytestmark = pytest.mark.anyio

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
UNKNOWN_ID = "AAAAAAAAAAAAAAAAAAAAAA"
OLD = "2000-01-01T00:00:00Z"


def checker() -> PasswordChecker:
    return PasswordChecker(
        {name: UserEntry(User(name, admin=name == "root"), hash_password(pw)) for name, pw in PASSWORDS.items()}
    )


CHECKER = checker()


def basic(name: str, password: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password or PASSWORDS[name]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AS = {"owner": basic("alice"), "other": basic("bob"), "admin": basic("root"), "anonymous": {}}


class Api:
    def __init__(self, client: httpx.AsyncClient, jobs: Tarefa) -> None:
        self.client, self.jobs = client, jobs

    async def start(self, who: str = "owner", headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return await self.client.post("/api/things", json={}, params=params, headers={**AS[who], **(headers or {})})

    async def new_job(self) -> str:
        response = await self.start()
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job"]["id"]
        return job_id

    async def call(self, who: str, method: str, path: str, **params: Any) -> httpx.Response:
        return await self.client.request(method, path, params=params, headers=AS[who])


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    """No workers: a job stays queued until cancelled."""
    app, jobs, _ = build_app(store_url, workers=0)
    jobs.configure_access(identity=users_file_identity(CHECKER))
    async with jobs.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, jobs)


def _not_found_shape(response: httpx.Response, job_id: str) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"].replace(job_id, "<id>")


# Each route on a job of alice's: (method, path, params) → the status each viewer gets.
ROUTES: list[tuple[str, str, dict[str, Any], dict[str, int]]] = [
    ("GET", "/api/jobs/{id}", {}, {"owner": 200, "other": 404, "admin": 200, "anonymous": 401}),
    ("GET", "/api/jobs/{id}", {"poll_timeout": 5, "last_modified": OLD},
     {"owner": 200, "other": 404, "admin": 200, "anonymous": 401}),
    ("GET", "/api/jobs/{id}/events", {}, {"owner": 200, "other": 404, "admin": 200, "anonymous": 401}),
    ("GET", "/api/jobs/{id}/callbacks", {}, {"owner": 200, "other": 404, "admin": 200, "anonymous": 401}),
    ("PATCH", "/api/jobs/{id}", {"action": "cancel"}, {"owner": 202, "other": 404, "admin": 202, "anonymous": 401}),
    ("DELETE", "/api/jobs/{id}", {}, {"owner": 409, "other": 404, "admin": 409, "anonymous": 401}),
]  # fmt: skip


@pytest.mark.parametrize("who", ["owner", "other", "admin", "anonymous"])
async def test_every_job_route_applies_ownership(api: Api, who: str) -> None:
    for method, template, params, expected in ROUTES:
        job_id = await api.new_job()  # a fresh queued job of alice's for each route
        response = await api.call(who, method, template.format(id=job_id), **params)
        assert response.status_code == expected[who], (method, template, params, response.text)
        if expected[who] == 404:  # exactly what an id that never existed gets: nothing leaks
            unknown = await api.call(who, method, template.format(id=UNKNOWN_ID), **params)
            assert _not_found_shape(response, job_id) == _not_found_shape(unknown, UNKNOWN_ID)
            assert job_id not in response.text.replace(f"'{job_id}'", "")
        if expected[who] == 401:
            assert response.headers["WWW-Authenticate"] == 'Basic realm="tarefa"'
            assert response.json()["error"]["code"] == "unauthorized"
        if expected[who] < 300 and method == "GET" and template == "/api/jobs/{id}":
            record = response.json()["record"]
            assert ("owner" in record) is (who == "admin"), record
            assert record.get("owner", "alice") == "alice"


async def test_a_long_poll_on_another_users_job_answers_404_at_once(api: Api) -> None:
    job_id = await api.new_job()
    started = time.monotonic()
    response = await api.call("other", "GET", f"/api/jobs/{job_id}", poll_timeout=5)
    assert response.status_code == 404
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    own = await api.call("owner", "GET", f"/api/jobs/{job_id}", poll_timeout=1)
    assert own.status_code == 200 and time.monotonic() - started >= 0.9  # the owner's really waits


async def test_a_deleted_job_of_another_user_and_a_terminal_one_stay_hidden(api: Api) -> None:
    job_id = await api.new_job()
    assert (await api.call("owner", "PATCH", f"/api/jobs/{job_id}", action="cancel")).status_code == 202
    assert (await api.call("other", "DELETE", f"/api/jobs/{job_id}")).status_code == 404
    assert (await api.call("other", "PATCH", f"/api/jobs/{job_id}", action="cancel")).status_code == 404
    assert (await api.call("owner", "GET", f"/api/jobs/{job_id}")).json()["record"]["state"] == "failure"
    assert (await api.call("owner", "DELETE", f"/api/jobs/{job_id}")).status_code == 204
    assert (await api.call("owner", "GET", f"/api/jobs/{job_id}")).status_code == 404


async def test_lists_show_the_viewers_jobs_and_an_administrator_sees_all_with_owners(api: Api) -> None:
    alices = {await api.new_job(), await api.new_job()}
    bobs = (await api.start("other")).json()["job"]["id"]
    listed = {who: (await api.call(who, "GET", "/api/jobs")).json()["records"] for who in ("owner", "other", "admin")}
    assert {record["id"] for record in listed["owner"]} == alices
    assert {record["id"] for record in listed["other"]} == {bobs}
    assert {(record["id"], record["owner"]) for record in listed["admin"]} == {
        *((job_id, "alice") for job_id in alices),
        (bobs, "bob"),
    }
    assert all("owner" not in record for record in listed["owner"] + listed["other"])
    assert (await api.call("anonymous", "GET", "/api/jobs")).status_code == 401


async def test_an_idempotency_key_is_per_user(api: Api) -> None:
    key = {"Idempotency-Key": "same-key"}
    first = await api.start("owner", key)
    again = await api.start("owner", key)
    bobs = await api.start("other", key)
    assert first.status_code == again.status_code == bobs.status_code == 202
    assert first.json()["job"]["id"] == again.json()["job"]["id"] != bobs.json()["job"]["id"]
    mismatch = await api.client.post("/api/things", json={"name": "y"}, headers={**AS["other"], **key})
    assert mismatch.status_code == 422 and first.json()["job"]["id"] not in mismatch.text


async def test_resource_busy_names_the_holding_job_only_to_who_may_see_it(api: Api) -> None:
    holder = (await api.start("owner", key="r1")).json()["job"]["id"]
    answers = {who: await api.start(who, key="r1") for who in ("owner", "other", "admin")}
    assert all(response.status_code == 409 for response in answers.values())
    assert answers["owner"].json()["error"]["job"]["id"] == holder
    assert answers["admin"].json()["error"]["job"]["id"] == holder
    assert "job" not in answers["other"].json()["error"] and holder not in answers["other"].text


async def test_401_for_missing_wrong_or_malformed_credentials_before_any_validation(api: Api) -> None:
    for headers in ({}, basic("alice", "wrong"), basic("nobody", "x"), {"Authorization": "Basic !!!"},
                    {"Authorization": "Bearer abc"}):  # fmt: skip
        for method, path, params in (("GET", "/api/jobs", {"max_records": 0}), ("POST", "/api/things", {})):
            response = await api.client.request(method, path, params=params, headers=headers, content=b"{bad")
            assert response.status_code == 401, (headers, path, response.text)
            assert response.headers["WWW-Authenticate"] == 'Basic realm="tarefa"'
            assert set(response.json()["error"]) >= {"code", "message"}
    assert (await api.client.get("/api/jobs", headers=AS["admin"])).json()["num_records"] == 0  # nothing was made


async def test_the_openapi_documents_401_when_an_identity_is_set(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert operations and all("401" in op["responses"] for op in operations)


async def test_long_polls_per_user_are_limited_and_a_refusal_changes_nothing(api: Api) -> None:
    api.jobs.configure_access(max_waiting_per_user=1)
    job_id = await api.new_job()
    waiting = asyncio.create_task(api.call("owner", "GET", f"/api/jobs/{job_id}", poll_timeout=10))
    while api.jobs.waiting_limit.open_for("alice") == 0:
        await asyncio.sleep(0.01)
    refused = await api.call("owner", "GET", f"/api/jobs/{job_id}", poll_timeout=10)
    assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == "too_many_waiting"
    bobs = (await api.start("other")).json()["job"]["id"]
    assert (await api.call("other", "GET", f"/api/jobs/{bobs}", poll_timeout=5, last_modified=OLD)).status_code == 200
    assert (await api.call("owner", "GET", f"/api/jobs/{job_id}")).status_code == 200  # standard polls still work
    await api.call("owner", "PATCH", f"/api/jobs/{job_id}", action="cancel")  # wakes the waiting poll
    assert (await waiting).json()["record"]["state"] == "failure"
    assert api.jobs.waiting_limit.open_for("alice") == 0


async def test_queued_jobs_are_limited_with_503_and_no_job(api: Api) -> None:
    api.jobs.configure_access(max_queued_jobs=2)
    assert [(await api.start()).status_code for _ in range(2)] == [202, 202]
    assert await api.jobs.store.count_queued() == 2
    refused = await api.start("other")
    assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == "queue_full"
    assert (await api.call("admin", "GET", "/api/jobs")).json()["num_records"] == 2
    assert await api.jobs.store.count_queued() == 2


async def test_without_users_access_is_open_and_authorization_is_ignored(store_url: str) -> None:
    app, jobs, _ = build_app(store_url, workers=0)
    async with jobs.running():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            started = await client.post("/api/things", json={}, headers=basic("alice", "whatever"))
            assert started.status_code == 202 and "owner" not in started.json()["job"]
            listed = await client.get("/api/jobs", headers={"Authorization": "Basic !!!"})
            assert listed.status_code == 200 and listed.json()["num_records"] == 1
            assert "401" not in repr((await client.get("/openapi.json")).json()["paths"])


async def test_a_successful_check_is_cached_and_a_failed_one_is_not() -> None:
    users = checker()
    assert users.cached("alice", PASSWORDS["alice"]) is None
    assert users.check("alice", PASSWORDS["alice"]) == User("alice")
    assert users.cached("alice", PASSWORDS["alice"]) == User("alice")
    assert users.check("alice", "wrong") is None and users.cached("alice", "wrong") is None
    assert users.check("nobody", "x") is None


async def test_the_documented_api_key_identity(anyio_backend: str) -> None:
    """docs/examples/api_key_identity.py, as docs/access.md shows it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "examples" / "api_key_identity.py"
    spec = importlib.util.spec_from_file_location("api_key_identity", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    alice, ops = {"X-API-Key": "key-of-alice-0123456789"}, {"X-API-Key": "key-of-ops-9876543210"}
    async with example.jobs.running():
        transport = httpx.ASGITransport(app=example.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            started = await client.post(
                "/api/reports", json={"title": "Q4"}, headers=alice, params={"return_timeout": 5}
            )
            assert started.status_code == 200 and started.json()["job"]["result"] == {"title": "Q4"}
            job_id = started.json()["job"]["id"]
            assert (await client.post("/api/reports", json={"title": "x"})).status_code == 401
            wrong = await client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": "key-of-alice-0123456788"})
            assert wrong.status_code == 401
            seen = (await client.get(f"/api/jobs/{job_id}", headers=ops)).json()["record"]
            assert seen["owner"] == "alice"
            assert "owner" not in (await client.get(f"/api/jobs/{job_id}", headers=alice)).json()["record"]
