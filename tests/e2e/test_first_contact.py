"""What a newcomer meets first: the client alone, the CLI's start-up, and the service's small answers.

Run as real processes: ``python -c 'import tarefa.client'``, the installed ``tarefa`` script
(not ``python -m tarefa``, which would put the current directory on ``sys.path`` by itself),
and a real ``tarefa serve``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import free_port

TAREFA_SCRIPT = str(Path(sys.executable).with_name("tarefa"))
SERVER_MODULES = ("fastapi", "starlette", "uvicorn", "tarefa.store", "tarefa.engine", "tarefa.http", "tarefa.serving")
LOADED_SERVER_MODULES = f"""
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.startswith({SERVER_MODULES!r}))))
"""


def server_modules_after(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + LOADED_SERVER_MODULES], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_import_tarefa_client_loads_no_server_module() -> None:
    assert server_modules_after("import tarefa.client") == []


def test_a_client_command_loads_no_server_module() -> None:
    run_cli = """
import sys
from tarefa.cli import main
for argv in (["jobs", "--help"], ["jobs", "show", "x", "--retry-for", "0", "--url", "http://127.0.0.1:9"]):
    sys.argv = ["tarefa", *argv]
    try:
        main()
    except SystemExit:
        pass
"""
    assert server_modules_after(run_cli) == []


def test_every_exported_name_still_works() -> None:
    import tarefa

    for name in tarefa.__all__:
        assert getattr(tarefa, name) is not None, name
    assert set(tarefa.__all__) <= set(dir(tarefa))
    assert tarefa.Tarefa.__module__ == "tarefa.http.mount" and tarefa.JobState.SUCCESS == "success"


def test_an_unknown_name_is_an_attribute_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import tarefa; tarefa.Nothing"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "module 'tarefa' has no attribute 'Nothing'" in done.stderr


def test_a_busy_port_is_one_line_and_exit_2_before_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [TAREFA_SCRIPT, "serve", "--port", str(port), "--store", f"sqlite:///{tmp_path / 'x.db'}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"tarefa: port {port} on 127.0.0.1 is in use (another tarefa serve?): stop it, or choose another --port"
    )
    assert not (tmp_path / "x.db").exists()  # refused before opening anything


MYSERVICE = """
from fastapi import FastAPI
from tarefa import JobContext, Tarefa

jobs = Tarefa()
app = FastAPI()
jobs.mount(app, prefix="/api")


@jobs.operation("noop")
async def noop(ctx: JobContext, params: dict) -> dict:
    return {}
"""


def test_serve_app_finds_the_module_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "myservice.py").write_text(MYSERVICE)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TAREFA_STORE")}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [TAREFA_SCRIPT, "serve", "--app", "myservice:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        answer = wait_for(f"http://127.0.0.1:{port}/api/jobs", proc)
        assert answer["num_records"] == 0
        assert (tmp_path / "tarefa.db").exists()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            return httpx.get(url, timeout=1.0).raise_for_status().json()
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_a_trailing_slash_is_served_like_the_path(server: Any) -> None:
    with_slash = httpx.get(f"{server.url}/api/jobs/", timeout=10)
    without = httpx.get(f"{server.url}/api/jobs", timeout=10)
    assert with_slash.status_code == 200 and with_slash.json() == without.json()
    unknown = httpx.get(f"{server.url}/api/nothing/", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_openapi_has_a_description_and_real_examples(server: Any) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert "202 Accepted" in schema["info"]["description"]
    components = schema["components"]["schemas"]
    assert components["HostIn"]["properties"]["name"]["examples"] == ["esx-01"]
    assert components["ClusterIn"]["properties"]["node_count"]["examples"] == [2]
    assert components["JobModel"]["properties"]["state"]["examples"] == ["running"]
