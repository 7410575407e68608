"""The reference service (SPEC §9) over real HTTP: ``tarefa serve`` with no application given.

Hosts register through ``host.register`` jobs; clusters are configured synchronously, deployed and
deleted through jobs; faults are injected by address (192.0.2.0/24: unreachable; 198.51.100.0/24:
the node fails to deploy).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

TERMINAL = ("success", "failure")
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

StartServer = Callable[..., Any]

# -- helpers ------------------------------------------------------------------------------------


def client_for(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=httpx.Timeout(60.0, connect=5.0))


def accepted(answer: httpx.Response, operation: str, resource: str | None = None) -> dict[str, Any]:
    """The job of a 202 answer, after checking the answer's shape (SPEC §2)."""
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()["job"]
    assert set(answer.json()) == {"job"}
    assert answer.headers["location"] == f"/api/jobs/{job['id']}"
    assert answer.headers["retry-after"].isdigit()
    assert job["operation"] == operation
    assert job["state"] in ("queued", "running")
    assert job["_links"] == {"self": {"href": f"/api/jobs/{job['id']}"}}
    if resource is not None:
        assert job["resource"] == {"href": resource}
    return job


def follow(client: httpx.Client, job: dict[str, Any], timeout: float = 30.0) -> tuple[dict[str, Any], list[str]]:
    """Long-poll ``job`` until it is terminal: the terminal job and every message seen on the way."""
    messages = [job["message"]]
    deadline = time.monotonic() + timeout
    while job["state"] not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job['id']} did not end in {timeout} s: {job}"
        answer = client.get(
            f"/api/jobs/{job['id']}", params={"poll_timeout": 10, "last_modified": job["last_modified"]}
        )
        assert answer.status_code == 200, answer.text
        job = answer.json()["record"]
        if job["message"] != messages[-1]:
            messages.append(job["message"])
    return job, messages


def assert_error(answer: httpx.Response, status: int, code: str, target: str | None = None) -> dict[str, Any]:
    """A SPEC §6 error answer; returns the error object."""
    assert answer.status_code == status, answer.text
    assert answer.headers.get("request-id")
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, error
    assert SNAKE_CASE.match(error["code"])
    assert isinstance(error["message"], str) and error["message"].strip(), error
    if target is not None:
        assert error.get("target") == target, error
    return error


def register_host(client: httpx.Client, name: str, address: str) -> dict[str, Any]:
    job = accepted(client.post("/api/hosts", json={"name": name, "address": address}), "host.register")
    ended, _ = follow(client, job)
    return ended


def create_cluster(client: httpx.Client, name: str, hosts: list[str]) -> dict[str, Any]:
    answer = client.post("/api/clusters", json={"name": name, "node_count": len(hosts), "hosts": hosts})
    assert answer.status_code == 201, answer.text
    cluster: dict[str, Any] = answer.json()["record"]
    assert answer.headers["location"] == f"/api/clusters/{cluster['id']}"
    return cluster


def read_cluster(client: httpx.Client, cluster_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/clusters/{cluster_id}")
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"record"}
    return answer.json()["record"]  # type: ignore[no-any-return]


# -- hosts --------------------------------------------------------------------------------------


def test_register_a_host_then_list_it_and_refuse_a_duplicate_name(start_server: StartServer) -> None:
    server = start_server(step_delay=0.01)
    with client_for(server) as client:
        answer = client.post("/api/hosts", json={"name": "esx-01", "address": "10.0.0.11"})
        job = accepted(answer, "host.register", resource="/api/hosts/esx-01")
        ended, messages = follow(client, job)

        assert ended["state"] == "success", ended
        host = {
            "name": "esx-01",
            "address": "10.0.0.11",
            "state": "registered",
            "_links": {"self": {"href": "/api/hosts/esx-01"}},
        }
        assert ended["result"] == host
        assert "error" not in ended
        assert ended["end_time"] >= ended["start_time"] >= ended["create_time"]
        assert len(messages) >= 2  # "Queued" and at least the last step's line
        hosts = client.get("/api/hosts")
        assert hosts.status_code == 200
        assert hosts.json()["num_records"] == 1
        assert hosts.json()["records"] == [host]
        assert client.get("/api/hosts/esx-01").json() == {"record": host}

        duplicate = client.post("/api/hosts", json={"name": "esx-01", "address": "10.0.0.12"})
        assert_error(duplicate, 409, "host_exists", target="name")
        jobs = client.get("/api/jobs").json()
        assert [record["id"] for record in jobs["records"]] == [job["id"]], "the 409 created a job"
        assert_error(client.get("/api/hosts/esx-99"), 404, "host_not_found")


def test_an_unreachable_host_fails_its_job_with_host_unreachable(start_server: StartServer) -> None:
    server = start_server(step_delay=0.01)
    with client_for(server) as client:
        job = accepted(client.post("/api/hosts", json={"name": "gone", "address": "192.0.2.5"}), "host.register")
        ended, _ = follow(client, job)
        assert ended["state"] == "failure", ended
        assert ended["error"]["code"] == "host_unreachable"
        assert "192.0.2.5" in ended["error"]["message"]
        assert "result" not in ended
        assert client.get("/api/hosts").json()["records"] == []
        assert_error(client.get("/api/hosts/gone"), 404, "host_not_found")


def test_a_bad_host_body_is_a_400_before_any_job(start_server: StartServer) -> None:
    server = start_server(step_delay=0.01)
    with client_for(server) as client:
        assert_error(client.post("/api/hosts", json={"name": "h"}), 400, "invalid_body", target="address")
        assert_error(client.post("/api/hosts", json={"name": "no spaces", "address": "10.0.0.1"}), 400, "invalid_body")
        assert client.get("/api/jobs").json()["num_records"] == 0


# -- clusters -----------------------------------------------------------------------------------


def test_cluster_configuration_is_validated(start_server: StartServer) -> None:
    server = start_server(step_delay=0.01)
    with client_for(server) as client:
        for name in ("h1", "h2"):
            assert register_host(client, name, f"10.0.1.{name[1]}")["state"] == "success"

        mismatch = client.post("/api/clusters", json={"name": "c", "node_count": 1, "hosts": ["h1", "h2"]})
        assert_error(mismatch, 400, "invalid_body", target="hosts")
        too_few = client.post("/api/clusters", json={"name": "c", "node_count": 2, "hosts": ["h1"]})
        assert_error(too_few, 400, "invalid_body", target="hosts")
        unknown = client.post("/api/clusters", json={"name": "c", "node_count": 2, "hosts": ["h1", "nope"]})
        assert "nope" in assert_error(unknown, 400, "invalid_body", target="hosts")["message"]
        three = client.post("/api/clusters", json={"name": "c", "node_count": 3, "hosts": ["h1", "h2", "h1"]})
        assert_error(three, 400, "invalid_body", target="node_count")
        assert client.get("/api/clusters").json()["records"] == []

        cluster = create_cluster(client, "c", ["h1", "h2"])
        assert cluster["name"] == "c" and cluster["node_count"] == 2 and cluster["state"] == "configured"
        assert [node["host"] for node in cluster["nodes"]] == ["h1", "h2"]
        assert cluster["_links"] == {"self": {"href": f"/api/clusters/{cluster['id']}"}}
        assert read_cluster(client, cluster["id"]) == cluster
        listed = client.get("/api/clusters").json()
        assert listed["num_records"] == 1 and listed["records"] == [cluster]
        assert client.get("/api/jobs").json()["num_records"] == 2, "configuring a cluster started a job"

        again = client.post("/api/clusters", json={"name": "c2", "node_count": 1, "hosts": ["h1"]})
        assert_error(again, 409, "host_in_use", target="hosts")
        assert_error(client.get("/api/clusters/nope"), 404, "cluster_not_found")


def test_deploy_then_delete_a_cluster(start_server: StartServer) -> None:
    server = start_server(step_delay=0.01)
    with client_for(server) as client:
        for index in range(1, 5):
            assert register_host(client, f"h{index}", f"10.0.2.{index}")["state"] == "success"
        cluster = create_cluster(client, "four", ["h1", "h2", "h3", "h4"])
        href = f"/api/clusters/{cluster['id']}"

        job = accepted(client.post(f"{href}/deploy"), "cluster.deploy", resource=href)
        ended, _ = follow(client, job)
        assert ended["state"] == "success", ended
        online = read_cluster(client, cluster["id"])
        assert online["state"] == "online"
        assert [node["state"] for node in online["nodes"]] == ["online"] * 4
        assert ended["result"] == online

        assert_error(client.post(f"{href}/deploy"), 409, "cluster_online")
        assert_error(client.post("/api/clusters/nope/deploy"), 404, "cluster_not_found")

        job = accepted(client.delete(href), "cluster.delete", resource=href)
        ended, _ = follow(client, job)
        assert ended["state"] == "success", ended
        assert ended["result"]["state"] == "deleted"
        assert_error(client.get(href), 404, "cluster_not_found")
        assert client.get("/api/clusters").json()["records"] == []
        assert_error(client.delete(href), 404, "cluster_not_found")


def test_a_node_on_a_failing_host_fails_the_deploy(start_server: StartServer) -> None:
    server = start_server(step_delay=0.01)
    with client_for(server) as client:
        assert register_host(client, "good", "10.0.3.1")["state"] == "success"
        assert register_host(client, "bad", "198.51.100.7")["state"] == "success"  # it registers
        cluster = create_cluster(client, "doomed", ["good", "bad"])

        job = accepted(client.post(f"/api/clusters/{cluster['id']}/deploy"), "cluster.deploy")
        ended, _ = follow(client, job)
        assert ended["state"] == "failure", ended
        assert ended["error"]["code"] == "node_deploy_failed"
        assert "2 of 2" in ended["error"]["message"] and "bad" in ended["error"]["message"]
        after = read_cluster(client, cluster["id"])
        assert after["state"] != "online"
        assert [node["state"] for node in after["nodes"]] == ["online", "failed"]


def test_deploy_reports_each_node_and_refuses_a_concurrent_deploy(start_server: StartServer) -> None:
    # Slower steps: a deploy lasts ~1 s, long enough to send a second one while it runs and to
    # see every per-node message through long polls.
    server = start_server(step_delay=0.25)
    with client_for(server) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:
            hosts = list(pool.map(lambda i: register_host(client, f"n{i}", f"10.0.4.{i}"), range(1, 5)))
        assert [host["state"] for host in hosts] == ["success"] * 4
        cluster = create_cluster(client, "busy", ["n1", "n2", "n3", "n4"])
        deploy = f"/api/clusters/{cluster['id']}/deploy"

        barrier = threading.Barrier(2)

        def start_deploy(_: int) -> httpx.Response:
            with client_for(server) as own:
                barrier.wait(timeout=10)
                return own.post(deploy)

        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = sorted(pool.map(start_deploy, range(2)), key=lambda answer: answer.status_code)
        assert [answer.status_code for answer in answers] == [202, 409], [answer.text for answer in answers]
        job = accepted(answers[0], "cluster.deploy")
        error = assert_error(answers[1], 409, "resource_busy")
        assert job["id"] in error["message"]
        assert error["job"]["id"] == job["id"]
        # and a deploy sent while it runs is refused the same way
        while_running = client.post(deploy)
        assert assert_error(while_running, 409, "resource_busy")["job"]["id"] == job["id"]

        ended, messages = follow(client, job)
        assert ended["state"] == "success", ended
        per_node = [message for message in messages if message.startswith("Deploying node")]
        assert [message.split(" on host ")[0] for message in per_node] == [
            f"Deploying node {index} of 4" for index in range(1, 5)
        ], messages
        assert read_cluster(client, cluster["id"])["state"] == "online"
