"""The reference service (SPEC §9): a small Deploy-style API built only on tarefa's public API.

Copy it as an example: it declares operations, mounts the job routes, validates requests
before any job exists, and makes the slow calls asynchronous with ``AsyncCall``.

Fault injection, by address in the documentation ranges that no real host has:
a host in 192.0.2.0/24 fails ``host.register`` (``host_unreachable``); a host in
198.51.100.0/24 registers, but ``cluster.deploy`` fails at its node (``node_deploy_failed``).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Response
from pydantic import BaseModel, Field

from tarefa import (
    SIGNED_IN,
    ApiError,
    AsyncCall,
    JobContext,
    OperationError,
    Precondition,
    Tarefa,
    asynchronous,
    serve_api_docs,
)

UNREACHABLE = ipaddress.ip_network("192.0.2.0/24")
FAILS_DEPLOY = ipaddress.ip_network("198.51.100.0/24")
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
HOST, CLUSTER = "host", "cluster"
# Claims that make the rules of SPEC §9 hold in the store, across processes: one cluster per name,
# one cluster per host. Taken with the cluster in one transaction, dropped with it.
CLUSTER_NAME, HOST_USE = "cluster-name", "host-use"
ClusterId = Annotated[str, Path(description="the cluster's id")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such resource"}}


class HostIn(BaseModel):
    name: Annotated[str, Field(pattern=NAME, description="unique host name", examples=["esx-01"])]
    address: Annotated[
        str, Field(min_length=1, max_length=253, description="IP address or DNS name", examples=["10.0.0.11"])
    ]


class ClusterIn(BaseModel):
    name: Annotated[str, Field(pattern=NAME, examples=["cluster-a"])]
    node_count: Annotated[Literal[1, 2, 4, 6, 8, 10, 12], Field(examples=[2])]
    hosts: Annotated[list[str], Field(description="one registered host per node", examples=[["esx-01", "esx-02"]])]


DESCRIPTION = """A small Deploy-style service built on tarefa, to try the asynchronous job flow.

`POST /api/hosts` and `POST /api/clusters/{id}/deploy` answer **202 Accepted** with
`{"job": ...}` and a `Location`; follow the job at `GET /api/jobs/{id}`, best with a long poll
(`?poll_timeout=60&last_modified=<the last_modified you saw>`), until `state` is `success` (see
`result`) or `failure` (see `error`). Every error answer is
`{"error": {"code", "message", "target"}}`. Fault injection: a host in 192.0.2.0/24 fails to
register; a host in 198.51.100.0/24 fails when its cluster is deployed.
"""


class _TrailingSlashIgnored:
    """``/api/jobs/`` is routed as ``/api/jobs``: one answer for both spellings of a path."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


def _in(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def _collection(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"num_records": len(records), "records": records, "_links": {}}


def create_app(*, store: str | None = None, workers: int = 4, step_delay: float = 1.0) -> FastAPI:
    """The reference service; ``step_delay`` is the duration of one simulated step (seconds)."""
    jobs = Tarefa(store, workers=workers)
    app = FastAPI(
        title="tarefa reference service",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # /api/jobs/ is served like /api/jobs (below), never a bare 307
    )
    app.add_middleware(_TrailingSlashIgnored)
    jobs.mount(app, prefix="/api")
    serve_api_docs(app)
    _declare_operations(jobs, step_delay)
    _host_routes(app, jobs)
    _cluster_routes(app, jobs)
    return app


# -- operations ---------------------------------------------------------------------------------


def _declare_operations(jobs: Tarefa, step_delay: float) -> None:
    @jobs.operation("host.register")
    async def register_host(ctx: JobContext, host: HostIn) -> dict[str, Any]:
        for progress, message in (
            (10, f"Contacting host {host.address}"),
            (40, "Checking the host's hypervisor"),
        ):
            await ctx.report(message, progress=progress)
            await ctx.sleep(step_delay)
        if _in(host.address, UNREACHABLE):
            raise OperationError("host_unreachable", f"Host {host.name} at {host.address} does not answer")
        await ctx.report("Recording the host", progress=80)
        await ctx.sleep(step_delay)
        record = {
            "name": host.name,
            "address": host.address,
            "state": "registered",
            "_links": {"self": {"href": f"/api/hosts/{host.name}"}},
        }
        await jobs.documents(HOST).put(host.name, record)
        return record

    @jobs.operation("cluster.deploy")
    async def deploy_cluster(ctx: JobContext, cluster_id: str) -> dict[str, Any]:
        cluster = await _cluster(jobs, cluster_id)
        await _save_cluster(jobs, cluster, state="deploying")
        for index, node in enumerate(cluster["nodes"], start=1):
            total = len(cluster["nodes"])
            await ctx.report(
                f"Deploying node {index} of {total} on host {node['host']}",
                progress=(index - 1) * 100 // total,
            )
            await ctx.sleep(step_delay)
            host = await jobs.documents(HOST).get(node["host"]) or {}
            if _in(str(host.get("address", "")), FAILS_DEPLOY):
                node["state"] = "failed"
                await _save_cluster(jobs, cluster, state="failed")
                raise OperationError(
                    "node_deploy_failed",
                    f"Node {index} of {total} failed to deploy on host {node['host']} ({host.get('address')})",
                )
            node["state"] = "online"
        return await _save_cluster(jobs, cluster, state="online")

    @jobs.operation("cluster.delete")
    async def delete_cluster(ctx: JobContext, cluster_id: str) -> dict[str, Any]:
        cluster = await _cluster(jobs, cluster_id)
        await _save_cluster(jobs, cluster, state="deleting")
        for index, node in enumerate(cluster["nodes"], start=1):
            await ctx.report(
                f"Removing node {index} from host {node['host']}",
                progress=(index - 1) * 100 // len(cluster["nodes"]),
            )
            await ctx.sleep(step_delay)
        await jobs.documents(CLUSTER).delete(cluster_id)
        for node in cluster["nodes"]:
            await jobs.documents(HOST_USE).delete(node["host"])
        await jobs.documents(CLUSTER_NAME).delete(cluster["name"])
        return {"id": cluster_id, "name": cluster["name"], "state": "deleted"}


async def _cluster(jobs: Tarefa, cluster_id: str) -> dict[str, Any]:
    cluster = await jobs.documents(CLUSTER).get(cluster_id)
    if cluster is None:
        raise _no_cluster(cluster_id)
    return cluster


def _no_cluster(cluster_id: str) -> ApiError:
    return ApiError(404, "cluster_not_found", f"there is no cluster {cluster_id!r}", target="id")


def _cluster_exists(name: str) -> ApiError:
    return ApiError(409, "cluster_exists", f"a cluster named {name!r} exists already", target="name")


async def _taken(jobs: Tarefa, body: ClusterIn) -> ApiError | None:
    """Why the cluster cannot be configured now: its name, or one of its hosts, is taken."""
    if await jobs.documents(CLUSTER_NAME).get(body.name) is not None:
        return _cluster_exists(body.name)
    for name in body.hosts:
        use = await jobs.documents(HOST_USE).get(name)
        if use is not None:
            message = f"host {name!r} already runs a node of cluster {use['cluster']!r}"
            return ApiError(409, "host_in_use", message, target="hosts")
    return None


async def _save_cluster(jobs: Tarefa, cluster: dict[str, Any], *, state: str) -> dict[str, Any]:
    cluster["state"] = state
    await jobs.documents(CLUSTER).put(cluster["id"], cluster)
    return cluster


# -- routes -------------------------------------------------------------------------------------


def _host_routes(app: FastAPI, jobs: Tarefa) -> None:
    @app.post("/api/hosts", tags=["hosts"], summary="Register a host", **asynchronous())
    async def register_host(host: HostIn, call: AsyncCall) -> Response:
        def absent(record: dict[str, Any] | None) -> None:
            if record is not None:
                raise ApiError(409, "host_exists", f"a host named {host.name!r} is already registered", target="name")

        absent(await jobs.documents(HOST).get(host.name))  # the common case, before any work
        return await call.start(
            "host.register",
            host,
            resource=f"/api/hosts/{host.name}",
            resource_key=f"host:{host.name}",
            precondition=Precondition(HOST, host.name, absent),  # holds when the job is stored
        )

    @app.get("/api/hosts", tags=["hosts"], summary="List hosts", dependencies=SIGNED_IN)
    async def list_hosts() -> dict[str, Any]:
        return _collection(await jobs.documents(HOST).list())

    @app.get("/api/hosts/{name}", tags=["hosts"], summary="Read a host", responses=_NOT_FOUND, dependencies=SIGNED_IN)
    async def get_host(name: str) -> dict[str, Any]:
        host = await jobs.documents(HOST).get(name)
        if host is None:
            raise ApiError(404, "host_not_found", f"there is no host {name!r}", target="name")
        return {"record": host}


def _cluster_routes(app: FastAPI, jobs: Tarefa) -> None:
    @app.post(
        "/api/clusters",
        status_code=201,
        tags=["clusters"],
        summary="Configure a cluster",
        dependencies=SIGNED_IN,
        responses={
            400: {"description": "Hosts that do not fit node_count, or are not registered"},
            409: {"description": "A cluster of this name exists, or a host is in use"},
        },
    )
    async def create_cluster(body: ClusterIn, response: Response) -> dict[str, Any]:
        await _check_hosts(jobs, body)
        if (taken := await _taken(jobs, body)) is not None:
            raise taken
        cluster_id = secrets.token_urlsafe(9)
        cluster = {
            "id": cluster_id,
            "name": body.name,
            "node_count": body.node_count,
            "state": "configured",
            "nodes": [
                {"name": f"{body.name}-{i:02d}", "host": host, "state": "configured"}
                for i, host in enumerate(body.hosts, start=1)
            ],
            "_links": {"self": {"href": f"/api/clusters/{cluster_id}"}},
        }
        claims = [
            (CLUSTER_NAME, body.name, {"id": cluster_id}),
            *((HOST_USE, h, {"cluster": body.name}) for h in body.hosts),
        ]
        if not await jobs.claim_documents([*claims, (CLUSTER, cluster_id, cluster)]):
            raise await _taken(jobs, body) or _cluster_exists(body.name)  # another request was first
        response.headers["Location"] = f"/api/clusters/{cluster_id}"
        return {"record": cluster}

    @app.get("/api/clusters", tags=["clusters"], summary="List clusters", dependencies=SIGNED_IN)
    async def list_clusters() -> dict[str, Any]:
        return _collection(await jobs.documents(CLUSTER).list())

    @app.get(
        "/api/clusters/{cluster_id}",
        tags=["clusters"],
        summary="Read a cluster",
        responses=_NOT_FOUND,
        dependencies=SIGNED_IN,
    )
    async def get_cluster(cluster_id: ClusterId) -> dict[str, Any]:
        return {"record": await _cluster(jobs, cluster_id)}

    @app.post("/api/clusters/{cluster_id}/deploy", tags=["clusters"], summary="Deploy a cluster", **asynchronous())
    async def deploy(cluster_id: ClusterId, call: AsyncCall) -> Response:
        def offline(cluster: dict[str, Any] | None) -> None:
            if cluster is None:
                raise _no_cluster(cluster_id)
            if cluster["state"] == "online":
                raise ApiError(409, "cluster_online", f"cluster {cluster['name']!r} is already online", target="id")

        offline(await jobs.documents(CLUSTER).get(cluster_id))
        href = f"/api/clusters/{cluster_id}"
        return await call.start(
            "cluster.deploy",
            cluster_id,
            resource=href,
            resource_key=f"cluster:{cluster_id}",
            precondition=Precondition(CLUSTER, cluster_id, offline),  # no deploy of an online cluster, ever
        )

    @app.delete("/api/clusters/{cluster_id}", tags=["clusters"], summary="Delete a cluster", **asynchronous())
    async def delete(cluster_id: ClusterId, call: AsyncCall) -> Response:
        def exists(cluster: dict[str, Any] | None) -> None:
            if cluster is None:
                raise _no_cluster(cluster_id)

        exists(await jobs.documents(CLUSTER).get(cluster_id))
        href = f"/api/clusters/{cluster_id}"
        return await call.start(
            "cluster.delete",
            cluster_id,
            resource=href,
            resource_key=f"cluster:{cluster_id}",
            precondition=Precondition(CLUSTER, cluster_id, exists),
        )


async def _check_hosts(jobs: Tarefa, body: ClusterIn) -> None:
    if len(body.hosts) != body.node_count:
        raise ApiError(
            400,
            "invalid_body",
            f"a {body.node_count}-node cluster needs {body.node_count} hosts, not {len(body.hosts)}",
            target="hosts",
        )
    if len(set(body.hosts)) != len(body.hosts):
        raise ApiError(400, "invalid_body", "each node needs its own host: a host is listed twice", target="hosts")
    for name in body.hosts:
        host = await jobs.documents(HOST).get(name)
        if host is None or host.get("state") != "registered":
            raise ApiError(400, "invalid_body", f"host {name!r} is not registered: register it first", target="hosts")
