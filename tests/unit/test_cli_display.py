"""The CLI's live progress bar: during an outage it says "reconnecting", not the last message."""

from __future__ import annotations

import io

from rich.console import Console

from tarefa.cli.client import _LiveBar
from tarefa.client import Job, RetryNotice


def test_the_live_bar_says_reconnecting_during_an_outage_and_resumes_after() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    running = Job.from_wire({"id": "j1", "state": "running", "message": "Deploying node 2 of 4", "progress": 50})
    with _LiveBar(console) as bar:
        bar.update(running)
        assert bar.progress.tasks[0].description == "running: Deploying node 2 of 4"
        bar.reconnecting(RetryNotice("GET", "http://127.0.0.1:8080/api/jobs/j1", "connection refused", 1, 0.25))
        task = bar.progress.tasks[0]
        assert task.description == "reconnecting: connection refused" and task.completed == 50
        bar.update(running)
        assert bar.progress.tasks[0].description == "running: Deploying node 2 of 4"
