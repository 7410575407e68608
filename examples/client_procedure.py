"""The general procedure with the tarefa client, against the reference service.

Start the service in one terminal, then run this in another::

    tarefa serve --step-delay 0.2
    python examples/client_procedure.py [--url http://127.0.0.1:8080] [--prefix demo]

It registers two hosts (jobs, followed with long polls, progress printed as it comes), shows what a
failed job looks like (an address in 192.0.2.0/24 never answers), configures a two-node cluster
(a synchronous call) and deploys it (a job again). Each name gets ``--prefix`` and a random suffix
so that the example can run again and again against the same service.
"""

from __future__ import annotations

import argparse
import secrets

from tarefa.client import ApiError, Client, Job, JobFailed


def show(job: Job) -> None:
    """The ``on_change`` callback: one line per visible change of the job."""
    progress = "   " if job.progress is None else f"{job.progress:3d}%"
    print(f"    {job.operation or 'job':<15} {job.state.value:<8} {progress} {job.message}")


def register_host(client: Client, name: str, address: str) -> Job:
    print(f"registering host {name} ({address})")
    # run() = submit (202 + Job, with an Idempotency-Key) then wait (long polls) until the job ends.
    return client.run("POST", "/api/hosts", {"name": name, "address": address}, on_change=show, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description="The job procedure against tarefa's reference service.")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--prefix", default="demo")
    args = parser.parse_args()
    tag = f"{args.prefix}-{secrets.token_hex(2)}"

    with Client(args.url) as client:
        hosts = [f"{tag}-esx-{i}" for i in (1, 2)]
        for i, name in enumerate(hosts, start=1):
            done = register_host(client, name, f"10.0.0.{i}")
            print(f"  -> {done.state.value}: {done.result}")

        try:
            register_host(client, f"{tag}-lost", "192.0.2.1")
        except JobFailed as failure:  # the job ran and ended in failure: the error is in the job
            print(f"  -> failed as expected: {failure.code}: {failure.message}")

        try:  # an error that prevents the job from starting at all is an HTTP error, at once
            client.submit("POST", "/api/hosts", {"name": hosts[0], "address": "10.0.0.9"})
        except ApiError as error:
            print(f"registering {hosts[0]} again: {error.status} {error.code}: {error.message}")

        # A synchronous call (201 + the record) goes through request(): same retries and errors.
        cluster = client.request("POST", "/api/clusters", json={"name": tag, "node_count": 2, "hosts": hosts})
        record = cluster.json()["record"]
        print(f"cluster {record['name']} configured: {cluster.headers['location']}")

        # The long way round, to show the parts: submit, then wait with a callback.
        job = client.submit("POST", f"/api/clusters/{record['id']}/deploy")
        print(f"deploying: job {job.id} is {job.state.value}")
        done = client.wait(job, on_change=show, timeout=300)
        print(f"  -> {done.state.value}: {done.message} (ended {done.end_time:%H:%M:%S})")


if __name__ == "__main__":
    main()
