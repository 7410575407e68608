"""The reference service's rules hold under races (SPEC §9), on both stores, across API processes:
one cluster per name, one cluster per host, never a deploy of a cluster already online.

On PostgreSQL two ``tarefa serve`` processes share one database and take the requests in turn; on
SQLite one process takes them all. The rules are checked by the store in the transaction that
writes (a claim of the names, a precondition on the cluster), not by a read before it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from job_polling import follow

from conftest import ServerProcess
from databases import temporary_database

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def servers(request: pytest.FixtureRequest, start_server: Any) -> Iterator[list[ServerProcess]]:
    if request.param == "sqlite":
        yield [start_server("--workers", "2", step_delay=0.05)]
        return
    with temporary_database() as url:
        first = start_server("--workers", "2", step_delay=0.05, store=url)
        yield [first, start_server("--workers", "2", step_delay=0.05, store=url)]


def _register(server: ServerProcess, *names: str) -> None:
    for name in names:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer = client.post("/api/hosts", json={"name": name, "address": "10.0.0.1"})
            assert answer.status_code == 202, answer.text
            assert follow(client, answer.json()["job"])["state"] == "success"


async def _storm(servers: list[ServerProcess], requests: list[tuple[str, str, Any]], waves: int = 1) -> Counter[int]:
    """Send the requests at once (in ``waves`` spaced by 0.1 s), spread over the servers."""
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def send(index: int, method: str, path: str, body: Any) -> httpx.Response:
            await asyncio.sleep(0.1 * (index * waves // len(requests)))
            url = servers[index % len(servers)].url + path
            return await client.request(method, url, json=body)

        answers = await asyncio.gather(*(send(i, *request) for i, request in enumerate(requests)))
    for answer in answers:
        assert answer.status_code < 300 or (answer.status_code == 409 and "error" in answer.json()), answer.text
    return Counter(answer.status_code for answer in answers)


def test_one_cluster_per_name_and_per_host(servers: list[ServerProcess]) -> None:
    _register(servers[0], "h1", "h2", "h3")
    same_name = [
        ("POST", "/api/clusters", {"name": "c1", "node_count": 1, "hosts": [f"h{1 + i % 2}"]}) for i in range(200)
    ]
    assert asyncio.run(_storm(servers, same_name)) == {201: 1, 409: 199}
    same_host = [("POST", "/api/clusters", {"name": f"x{i}", "node_count": 1, "hosts": ["h3"]}) for i in range(200)]
    assert asyncio.run(_storm(servers, same_host)) == {201: 1, 409: 199}
    clusters = httpx.get(f"{servers[-1].url}/api/clusters").json()["records"]
    assert sorted(len(c["nodes"]) for c in clusters) == [1, 1]
    assert len({c["name"] for c in clusters}) == 2
    assert len({node["host"] for c in clusters for node in c["nodes"]}) == 2


def test_a_cluster_online_is_never_deployed_again(servers: list[ServerProcess]) -> None:
    _register(servers[0], "d1")
    created = httpx.post(f"{servers[0].url}/api/clusters", json={"name": "d", "node_count": 1, "hosts": ["d1"]})
    cluster_id = created.json()["record"]["id"]
    deploys = [("POST", f"/api/clusters/{cluster_id}/deploy", None)] * 200
    counts = asyncio.run(_storm(servers, deploys, waves=6))  # some arrive after the first deploy ended
    assert counts == {202: 1, 409: 199}
    jobs = httpx.get(f"{servers[-1].url}/api/jobs", params={"operation": "cluster.deploy"}).json()["records"]
    assert len(jobs) == 1
    with httpx.Client(base_url=servers[-1].url, timeout=30) as client:
        assert follow(client, jobs[0])["state"] == "success"
    assert httpx.get(f"{servers[0].url}/api/clusters/{cluster_id}").json()["record"]["state"] == "online"
    again = httpx.post(f"{servers[-1].url}/api/clusters/{cluster_id}/deploy")
    assert again.status_code == 409 and again.json()["error"]["code"] == "cluster_online"
