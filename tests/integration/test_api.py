"""The job API (SPEC §1 to §4, §6) through httpx against the ASGI app, on a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_app import Gates, build_app

from tarefa import Tarefa, model
from tarefa.model import JobState
from tarefa.store import JobChange, Outcome, StoreError, StoreUnavailable

pytestmark = pytest.mark.anyio

Factory = Callable[..., Any]


class Api:
    def __init__(self, client: httpx.AsyncClient, jobs: Tarefa, gates: Gates) -> None:
        self.client, self.jobs, self.gates = client, jobs, gates

    async def start(self, body: dict[str, Any] | None = None, **params: Any) -> httpx.Response:
        return await self.client.post("/api/things", json=body or {}, params=params)

    async def job(self, job_id: str, **params: Any) -> dict[str, Any]:
        response = await self.client.get(f"/api/jobs/{job_id}", params=params)
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()["record"]
        return record

    async def until(self, job_id: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        record = await self.job(job_id)
        deadline = time.monotonic() + 10
        while not predicate(record):
            assert time.monotonic() < deadline, record
            record = await self.job(job_id, poll_timeout=5, last_modified=record["last_modified"])
        return record

    async def terminal(self, job_id: str) -> dict[str, Any]:
        return await self.until(job_id, lambda r: r["state"] in ("success", "failure"))

    async def count(self) -> int:
        response = await self.client.get("/api/jobs", params={"max_records": 1000})
        return int(response.json()["num_records"])


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[Factory]:
    stack: list[Any] = []

    async def factory(**options: Any) -> Api:
        app, jobs, gates = build_app(f"sqlite:///{tmp_path}/api-{len(stack)}.db", **options)
        running = jobs.running()
        await running.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        stack.append((running, client, gates))
        return Api(client, jobs, gates)

    yield factory
    for running, client, gates in reversed(stack):
        for name in list(gates._events):
            gates.open(name)
        await client.aclose()
        await running.__aexit__(None, None, None)


@pytest.fixture
async def api(make_api: Factory) -> Api:
    result: Api = await make_api()
    return result


@pytest.fixture
async def idle(make_api: Factory) -> Api:
    """No workers: jobs stay queued."""
    result: Api = await make_api(workers=0)
    return result


# -- starting ------------------------------------------------------------------------------------


async def test_accepted_answer(idle: Api) -> None:
    response = await idle.start({"name": "a"})
    assert response.status_code == 202
    job = response.json()["job"]
    assert job["state"] == "queued" and job["operation"] == "thing.make"
    assert response.headers["location"] == f"/api/jobs/{job['id']}" == job["_links"]["self"]["href"]
    assert int(response.headers["retry-after"]) >= 1
    assert job["resource"] == {"href": "/api/things/a"}
    assert job["create_time"].endswith("Z") and job["last_modified"] == job["create_time"]
    assert (await idle.job(job["id"]))["id"] == job["id"]


async def test_job_runs_to_success(api: Api) -> None:
    job = (await api.start({"name": "b", "steps": 3})).json()["job"]
    done = await api.terminal(job["id"])
    assert done["state"] == "success" and done["result"] == {"name": "b"} and done["progress"] == 100
    assert done["start_time"] and done["end_time"] and "error" not in done


async def test_operation_error_and_unexpected_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    failed = await api.terminal((await api.start({"fail": "disk_full"})).json()["job"]["id"])
    assert failed["state"] == "failure" and failed["error"]["code"] == "disk_full" and "result" not in failed
    with caplog.at_level(logging.ERROR, logger="tarefa.runner"):
        crashed = await api.terminal((await api.start({"crash": True})).json()["job"]["id"])
    assert crashed["error"]["code"] == "internal_error"
    assert "unexpected bug" not in crashed["error"]["message"]  # no internals leak
    assert any("unexpected bug" in str(r.exc_info) for r in caplog.records)


async def test_plain_function_operation_reports_from_its_thread(api: Api) -> None:
    job = (await api.client.post("/api/sync-things", json={"name": "t", "steps": 2})).json()["job"]
    done = await api.terminal(job["id"])
    assert done["state"] == "success" and done["result"] == {"name": "t", "thread": True}


async def test_return_timeout_answers_200_with_the_ended_job(api: Api) -> None:
    response = await api.start({"name": "quick"}, return_timeout=5)
    assert response.status_code == 200 and response.json()["job"]["state"] == "success"
    slow = await api.start({"gate": "never"}, return_timeout=1)
    assert slow.status_code == 202 and slow.json()["job"]["state"] == "running"


async def test_idempotency_key_returns_the_same_job(api: Api) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = await api.client.post("/api/things", json={"name": "i"}, headers=headers)
    again = await api.client.post("/api/things", json={"name": "i"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["job"]["id"] == again.json()["job"]["id"]
    other = await api.client.post("/api/things", json={"name": "i"}, headers={"Idempotency-Key": "order-18"})
    assert other.json()["job"]["id"] != first.json()["job"]["id"]
    mismatch = await api.client.post("/api/things", json={"name": "j"}, headers=headers)
    assert mismatch.status_code == 422 and mismatch.json()["error"]["code"] == "idempotency_key_reused"


async def test_idempotent_replay_keeps_the_first_status_and_shows_the_job_now(api: Api) -> None:
    headers = {"Idempotency-Key": "k-200"}
    first = await api.client.post("/api/things?return_timeout=5", json={"name": "r"}, headers=headers)
    assert first.status_code == 200
    replay = await api.client.post("/api/things", json={"name": "r"}, headers=headers)
    assert replay.status_code == 200 and replay.json()["job"]["id"] == first.json()["job"]["id"]
    gated = await api.client.post("/api/things", json={"gate": "g1"}, headers={"Idempotency-Key": "k-202"})
    assert gated.status_code == 202
    api.gates.open("g1")
    await api.terminal(gated.json()["job"]["id"])
    replay = await api.client.post("/api/things", json={"gate": "g1"}, headers={"Idempotency-Key": "k-202"})
    assert replay.status_code == 202 and replay.json()["job"]["state"] == "success"


async def test_endpoint_validation_runs_before_any_job(idle: Api) -> None:
    response = await idle.start({"name": "refused"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "thing_exists"
    assert await idle.count() == 0


async def test_resource_key_is_409_while_a_job_holds_it(api: Api) -> None:
    first = (await api.start({"gate": "hold"}, key="thing:1")).json()["job"]
    busy = await api.start({}, key="thing:1")
    assert busy.status_code == 409
    error = busy.json()["error"]
    assert error["code"] == "resource_busy" and first["id"] in error["message"] and error["job"]["id"] == first["id"]
    assert (await api.start({}, key="thing:2")).status_code == 202
    api.gates.open("hold")
    await api.terminal(first["id"])
    assert (await api.start({}, key="thing:1")).status_code == 202


# -- reading -------------------------------------------------------------------------------------


async def test_standard_poll_headers(api: Api) -> None:
    job = (await api.start({"gate": "h"})).json()["job"]
    response = await api.client.get(f"/api/jobs/{job['id']}")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["retry-after"] == "1" and response.headers["etag"]
    assert response.headers["request-id"]
    first_etag = response.headers["etag"]
    api.gates.open("h")
    await api.terminal(job["id"])
    done = await api.client.get(f"/api/jobs/{job['id']}")
    assert "retry-after" not in done.headers and done.headers["etag"] != first_etag


async def test_unknown_job_is_404_with_the_error_body(api: Api) -> None:
    for params in ({}, {"poll_timeout": 5}):
        response = await api.client.get("/api/jobs/no-such-job", params=params)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found" and response.headers["request-id"]


async def test_long_poll_answers_within_100_ms_of_the_change(api: Api) -> None:
    job = (await api.start({"gate": "lp"})).json()["job"]
    record = await api.until(job["id"], lambda r: r["message"] == "waiting for gate lp")
    poll = asyncio.create_task(api.job(job["id"], poll_timeout=30, last_modified=record["last_modified"]))
    await asyncio.sleep(0.3)
    assert not poll.done()  # it does not answer before its event
    opened = time.perf_counter()
    api.gates.open("lp")
    answer = await poll
    assert time.perf_counter() - opened < 0.1
    assert answer["last_modified"] > record["last_modified"]


async def test_long_poll_times_out_with_the_unchanged_job(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    started = time.perf_counter()
    response = await idle.client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 1})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and 1.0 <= elapsed < 2.0
    assert response.json()["record"]["last_modified"] == job["last_modified"]
    assert "retry-after" not in response.headers


async def test_change_committed_between_the_read_and_the_wait_still_wakes(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    store = idle.jobs.store
    original = store.get_job
    idle.jobs.hub.remember(False)  # the job is read from the store (the next test: from the hub)

    async def read_then_cancel(job_id: str, owner: str | None = None) -> model.Job | None:
        found = await original(job_id, owner)
        await store.cancel_job(job_id)  # commits after the read, before the wait
        return found

    store.get_job = read_then_cancel  # type: ignore[method-assign]
    started = time.perf_counter()
    response = await idle.client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 30})
    assert time.perf_counter() - started < 1.0
    assert response.json()["record"]["state"] == "failure"


async def test_change_committed_after_the_hub_answered_the_read_still_wakes(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    hub, store = idle.jobs.hub, idle.jobs.store
    original = hub.known
    assert original(job["id"]) is not None  # an exclusive store: the hub remembers the new job
    cancelling: list[asyncio.Task[Any]] = []

    def known_then_cancel(job_id: str) -> model.Job | None:
        found = original(job_id)
        if found is not None and not cancelling:  # commits after the read, before the wait
            cancelling.append(asyncio.ensure_future(store.cancel_job(job_id)))
        return found

    hub.known = known_then_cancel  # type: ignore[method-assign]
    started = time.perf_counter()
    response = await idle.client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 30})
    assert time.perf_counter() - started < 1.0
    assert response.json()["record"]["state"] == "failure" and cancelling


async def test_long_poll_baseline_forms(api: Api) -> None:
    job = (await api.start({"gate": "b"})).json()["job"]
    record = await api.until(job["id"], lambda r: r["message"] == "waiting for gate b")
    stamp = record["last_modified"]
    seconds_only = stamp[:19] + "Z"  # earlier than the job's last change: answers at once
    offset = model.format_timestamp(model.parse_timestamp(stamp)).replace("Z", "+00:00")
    for value in (seconds_only, ">" + seconds_only, ">=" + seconds_only):
        started = time.perf_counter()
        assert (await api.job(job["id"], poll_timeout=10, last_modified=value))["id"] == job["id"]
        assert time.perf_counter() - started < 1.0
    for value in (stamp, ">" + stamp, ">=" + stamp, offset, stamp.replace("Z", "") + "-00:00"):
        poll = asyncio.create_task(api.job(job["id"], poll_timeout=1, last_modified=value))
        await asyncio.sleep(0.2)
        assert not poll.done(), value  # not changed since the baseline: it waits
        await poll


async def test_last_modified_without_poll_timeout_has_no_effect(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    started = time.perf_counter()
    await idle.job(job["id"], last_modified=job["last_modified"])
    assert time.perf_counter() - started < 0.5


async def test_terminal_job_answers_a_long_poll_at_once(api: Api) -> None:
    job = (await api.start({}, return_timeout=5)).json()["job"]
    started = time.perf_counter()
    record = await api.job(job["id"], poll_timeout=120, last_modified=job["last_modified"])
    assert record["state"] == "success" and time.perf_counter() - started < 0.5


async def test_job_deleted_during_the_wait_is_404(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    poll = asyncio.create_task(idle.client.get(f"/api/jobs/{job['id']}", params={"poll_timeout": 30}))
    await asyncio.sleep(0.1)
    idle.jobs.hub.publish([JobChange(job["id"], None)])  # as the store announces a deletion
    response = await asyncio.wait_for(poll, 2)
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


async def test_progress_reports_wake_each_long_poll_in_order(api: Api) -> None:
    job = (await api.start({"steps": 5, "gate": "p"})).json()["job"]
    seen: list[str] = []
    record = job
    while record["message"] != "waiting for gate p":
        record = await api.job(job["id"], poll_timeout=5, last_modified=record["last_modified"])
        seen.append(record["message"])
    # every report is a visible change; a long poll may skip some but never sees them out of order
    steps = [m for m in seen if m.startswith("step ")]
    assert steps == sorted(steps)
    api.gates.open("p")


async def test_fields_limit_the_record(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    record = await idle.job(job["id"], fields="message,progress")
    assert set(record) == {"id", "state", "last_modified", "_links", "message", "progress"}
    assert set(await idle.job(job["id"], fields="*")) >= {"operation", "create_time"}


# -- bad input -----------------------------------------------------------------------------------

BAD_READS = [
    ("/api/jobs/{id}", {"poll_timeout": "0"}, "poll_timeout"),
    ("/api/jobs/{id}", {"poll_timeout": "121"}, "poll_timeout"),
    ("/api/jobs/{id}", {"poll_timeout": "abc"}, "poll_timeout"),
    ("/api/jobs/{id}", {"poll_timeout": "1.5"}, "poll_timeout"),
    ("/api/jobs/{id}", {"poll_timeout": "5", "last_modified": "yesterday"}, "last_modified"),
    ("/api/jobs/{id}", {"poll_timeout": "5", "last_modified": "2026-02-30T00:00:00Z"}, "last_modified"),
    ("/api/jobs/{id}", {"fields": "id,nonsense"}, "fields"),
    ("/api/jobs", {"max_records": "0"}, "max_records"),
    ("/api/jobs", {"max_records": "1001"}, "max_records"),
    ("/api/jobs", {"max_records": "many"}, "max_records"),
    ("/api/jobs", {"order_by": "name"}, "order_by"),
    ("/api/jobs", {"order_by": "create_time sideways"}, "order_by"),
    ("/api/jobs", {"state": "done"}, "state"),
    ("/api/jobs", {"cursor": "!!!"}, "cursor"),
    ("/api/jobs", {"fields": "bogus"}, "fields"),
]


@pytest.mark.parametrize(("path", "params", "target"), BAD_READS)
async def test_malformed_read_parameters_are_400(idle: Api, path: str, params: dict[str, str], target: str) -> None:
    job = (await idle.start()).json()["job"]
    response = await idle.client.get(path.format(id=job["id"]), params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["target"] == target and error["code"] == "invalid_parameter" and error["message"]
    assert response.headers["request-id"]


BAD_STARTS: list[tuple[dict[str, str], dict[str, str], Any, str]] = [
    ({"return_timeout": "-1"}, {}, {}, "return_timeout"),
    ({"return_timeout": "121"}, {}, {}, "return_timeout"),
    ({"return_timeout": "soon"}, {}, {}, "return_timeout"),
    ({}, {"Idempotency-Key": "k" * 256}, {}, "Idempotency-Key"),
    ({}, {"Idempotency-Key": "tab\there"}, {}, "Idempotency-Key"),
    ({}, {}, {"steps": "several"}, "steps"),
    ({}, {}, ["not", "an", "object"], "body"),
    ({}, {}, "{not json", "body"),
]


@pytest.mark.parametrize(("params", "headers", "body", "target"), BAD_STARTS)
async def test_malformed_starts_are_400_and_store_nothing(
    idle: Api, params: dict[str, str], headers: dict[str, str], body: Any, target: str
) -> None:
    if isinstance(body, str):
        content = body.encode()
    else:
        import json

        content = json.dumps(body).encode()
    response = await idle.client.post(
        "/api/things", params=params, content=content, headers={"content-type": "application/json", **headers}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["target"].lower() in (target.lower(), f"body.{target}".lower())
    assert await idle.count() == 0


async def test_framework_errors_use_the_error_body(api: Api) -> None:
    missing = await api.client.get("/api/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await api.client.put("/api/jobs")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


async def test_unexpected_fault_is_500_without_a_trace(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.client._transport.app, raise_app_exceptions=False),  # type: ignore[attr-defined]
        base_url="http://test",
    )
    with caplog.at_level(logging.ERROR, logger="tarefa.http"):
        response = await client.get("/api/broken")
    await client.aclose()
    assert response.status_code == 500
    error = response.json()["error"]
    rid = response.headers["request-id"]
    assert error["code"] == "internal_error" and rid in error["message"] and "Traceback" not in response.text
    assert any(rid in record.getMessage() for record in caplog.records)


# -- listing -------------------------------------------------------------------------------------


async def test_list_filters_and_orders(api: Api) -> None:
    done = [(await api.start({"name": f"d{i}"}, return_timeout=5)).json()["job"]["id"] for i in range(3)]
    held = (await api.start({"gate": "list"})).json()["job"]["id"]
    await api.until(held, lambda r: r["state"] == "running")

    async def ids(**params: Any) -> list[str]:
        body = (await api.client.get("/api/jobs", params=params)).json()
        assert body["num_records"] == len(body["records"])
        return [r["id"] for r in body["records"]]

    assert await ids(state="running") == [held]
    assert await ids(state="success", order_by="create_time asc") == done
    assert await ids(state="success") == done[::-1]  # default: newest first
    assert set(await ids(state="queued|running")) == {held}
    assert await ids(operation="thing.sync") == []
    assert (await ids(order_by="last_modified desc"))[0] in [*done, held]
    api.gates.open("list")


async def test_pagination_is_complete_and_stable_while_jobs_are_added(idle: Api) -> None:
    created = [(await idle.start({"name": f"p{i}"})).json()["job"]["id"] for i in range(25)]
    seen: list[str] = []
    response = await idle.client.get("/api/jobs", params={"max_records": 7, "order_by": "create_time asc"})
    while True:
        body = response.json()
        seen += [r["id"] for r in body["records"]]
        await idle.start({"name": "late"})  # new jobs arrive while paging
        if "next" not in body["_links"]:
            break
        response = await idle.client.get(body["_links"]["next"]["href"])
    assert seen[:25] == created and len(seen) == len(set(seen))


async def test_list_fields(idle: Api) -> None:
    await idle.start()
    body = (await idle.client.get("/api/jobs", params={"fields": "operation"})).json()
    assert set(body["records"][0]) == {"id", "state", "last_modified", "_links", "operation"}


# -- changing ------------------------------------------------------------------------------------


async def test_cancel_a_queued_job(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    response = await idle.client.patch(f"/api/jobs/{job['id']}", params={"action": "cancel"})
    assert response.status_code == 202
    cancelled = response.json()["job"]
    assert cancelled["state"] == "failure" and cancelled["error"]["code"] == "cancelled"
    again = await idle.client.patch(f"/api/jobs/{job['id']}", params={"action": "cancel"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_terminal"


async def test_cancel_a_running_job(api: Api) -> None:
    job = (await api.start({"gate": "c"})).json()["job"]
    await api.until(job["id"], lambda r: r["state"] == "running")
    response = await api.client.patch(f"/api/jobs/{job['id']}", params={"action": "cancel"})
    assert response.status_code == 202 and response.json()["job"]["state"] == "running"
    done = await api.terminal(job["id"])
    assert done["state"] == "failure" and done["error"]["code"] == "cancelled"


@pytest.mark.parametrize("params", [{}, {"action": "pause"}])
async def test_bad_actions(idle: Api, params: dict[str, str]) -> None:
    job = (await idle.start()).json()["job"]
    response = await idle.client.patch(f"/api/jobs/{job['id']}", params=params)
    assert response.status_code == 400 and response.json()["error"]["target"] == "action"
    assert (await idle.job(job["id"]))["state"] == "queued"


async def test_cancel_and_delete_unknown_jobs_are_404(idle: Api) -> None:
    assert (await idle.client.patch("/api/jobs/nope", params={"action": "cancel"})).status_code == 404
    assert (await idle.client.delete("/api/jobs/nope")).status_code == 404


async def test_delete(idle: Api) -> None:
    job = (await idle.start()).json()["job"]
    refused = await idle.client.delete(f"/api/jobs/{job['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_not_terminal"
    await idle.client.patch(f"/api/jobs/{job['id']}", params={"action": "cancel"})
    deleted = await idle.client.delete(f"/api/jobs/{job['id']}")
    assert deleted.status_code == 204 and deleted.content == b"" and deleted.headers["request-id"]
    assert (await idle.client.get(f"/api/jobs/{job['id']}")).status_code == 404


async def test_retention_purges_ended_jobs(make_api: Factory) -> None:
    api = await make_api(retention=timedelta(milliseconds=200))
    job = (await api.start({}, return_timeout=5)).json()["job"]
    deadline = time.monotonic() + 5
    while (await api.client.get(f"/api/jobs/{job['id']}")).status_code == 200:
        assert time.monotonic() < deadline, "not purged"
        await asyncio.sleep(0.1)


# -- OpenAPI -------------------------------------------------------------------------------------


async def test_openapi_documents_asynchronous_calls(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    post = schema["paths"]["/api/things"]["post"]
    assert "202" in post["responses"] and post["x-tarefa-asynchronous"] is True
    envelope = post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    assert envelope.endswith("/JobEnvelope")
    assert set(post["responses"]["202"]["headers"]) == {"Location", "Retry-After"}
    names = {p["name"] for p in post["parameters"]}
    assert {"return_timeout", "Idempotency-Key"} <= names
    job_schema = schema["components"]["schemas"]["JobModel"]
    assert job_schema["properties"]["state"]["enum"] == ["queued", "running", "success", "failure"]
    assert {"/api/jobs", "/api/jobs/{job_id}"} <= set(schema["paths"])
    # validation errors are documented as they are answered: 400 with the error body
    assert "HTTPValidationError" not in str(schema)
    get = schema["paths"]["/api/jobs/{job_id}"]["get"]["responses"]
    assert "422" not in get and get["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


# -- store faults --------------------------------------------------------------------------------


async def test_an_unavailable_store_is_503_with_retry_after(idle: Api) -> None:
    job = (await idle.start()).json()["job"]

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("connection refused")

    idle.jobs.store.get_job = down  # type: ignore[method-assign]
    idle.jobs.hub.remember(False)  # a job the hub remembers is answered without the store
    response = await idle.client.get(f"/api/jobs/{job['id']}")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "store_unavailable" and response.headers["request-id"]


async def test_an_outcome_the_store_refuses_ends_the_job_as_internal_error(api: Api) -> None:
    store = api.jobs.store
    original = store.finish_job

    async def refuse_success(job_id: str, worker: str, outcome: Outcome) -> model.Job | None:
        if outcome.state is JobState.SUCCESS:
            raise StoreError("text with a NUL character")
        return await original(job_id, worker, outcome)

    store.finish_job = refuse_success  # type: ignore[method-assign]
    job = (await api.start({"name": "n"})).json()["job"]
    done = await api.terminal(job["id"])
    assert done["state"] == "failure" and done["error"]["code"] == "internal_error"
    assert "could not be stored" in done["error"]["message"]


async def test_a_store_fault_during_return_timeout_still_answers_202_with_the_job(api: Api) -> None:
    store = api.jobs.store

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("connection lost")

    original = store.get_job
    store.get_job = down  # type: ignore[method-assign]
    response = await api.start({"gate": "rt"}, return_timeout=5)
    store.get_job = original  # type: ignore[method-assign]
    assert response.status_code == 202
    job_id = response.json()["job"]["id"]
    assert response.headers["location"].endswith(job_id)
    api.gates.open("rt")
    assert (await api.terminal(job_id))["state"] == "success"


async def test_a_jobs_history_is_read_oldest_first_in_pages(api: Api) -> None:
    job_id = (await api.start({"steps": 3})).json()["job"]["id"]
    done = await api.terminal(job_id)
    response = await api.client.get(f"/api/jobs/{job_id}/events")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    events = body["records"]
    assert body["num_records"] == len(events) == 6 and body["_links"] == {}
    assert [e["state"] for e in events] == ["queued", "running", "running", "running", "running", "success"]
    assert [e["message"] for e in events[2:5]] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    assert [e["progress"] for e in events] == [None, None, 33, 66, 100, 100]
    assert all(e["job_id"] == job_id and "error" not in e for e in events)
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    assert events[-1]["time"] == done["last_modified"]
    pages, href = [], f"/api/jobs/{job_id}/events?max_records=4"
    while href:
        page = (await api.client.get(href)).json()
        pages.append(page["records"])
        href = page["_links"].get("next", {}).get("href")
    assert [len(page) for page in pages] == [4, 2] and [e for page in pages for e in page] == events
    later = (await api.client.get(f"/api/jobs/{job_id}/events", params={"after": events[3]["seq"]})).json()
    assert later["records"] == events[4:]


async def test_a_failed_jobs_last_event_carries_its_error(api: Api) -> None:
    job_id = (await api.start({"fail": "boom"})).json()["job"]["id"]
    await api.terminal(job_id)
    events = (await api.client.get(f"/api/jobs/{job_id}/events")).json()["records"]
    assert events[-1]["state"] == "failure" and events[-1]["error"] == {
        "code": "boom",
        "message": "failed on purpose: boom",
    }


@pytest.mark.parametrize("params", [{"after": "-1"}, {"after": "x"}, {"max_records": "0"}, {"max_records": "1001"}])
async def test_bad_history_parameters_are_400(idle: Api, params: dict[str, str]) -> None:
    job_id = (await idle.start()).json()["job"]["id"]
    response = await idle.client.get(f"/api/jobs/{job_id}/events", params=params)
    assert response.status_code == 400 and response.json()["error"]["target"] == next(iter(params))


async def test_the_history_of_an_unknown_or_deleted_job_is_404(api: Api) -> None:
    assert (await api.client.get("/api/jobs/nope/events")).json()["error"]["code"] == "job_not_found"
    job_id = (await api.start()).json()["job"]["id"]
    await api.terminal(job_id)
    assert (await api.client.delete(f"/api/jobs/{job_id}")).status_code == 204
    response = await api.client.get(f"/api/jobs/{job_id}/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


async def test_the_list_answers_with_a_trailing_slash_too(idle: Api) -> None:
    job_id = (await idle.start()).json()["job"]["id"]
    answer = await idle.client.get("/api/jobs/", params={"max_records": 5})
    assert answer.status_code == 200 and [record["id"] for record in answer.json()["records"]] == [job_id]
