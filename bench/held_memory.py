"""W5 side by side: memory per held long poll of tarefa (SQLite) run on several source trees in one
run, and the floors below it (issue 11).

    python -m bench.held_memory [--polls 10000] [old=/tmp/old/src] [new=src] [floor] [raw-uvicorn] [raw-tarefa]
                                [raw-parked]

Each ``label=SRC`` serves ``bench.servers.tarefa_app`` from that source tree (``git archive <commit> src |
tar -x -C /tmp/old`` for an older one) and measures it exactly as ``bench.run``'s W5 does
(:func:`bench.held.measure_held`: VmRSS with every request held minus before, per request). ``floor`` is
W5's floor (uvicorn + FastAPI holding a request on a timer); ``raw-uvicorn`` and ``raw-tarefa`` are a raw
ASGI handler on uvicorn with its own HTTP protocol or tarefa's, and ``raw-parked`` tarefa's protocol holding
the request with no task (``bench/servers/raw_hold.py``). Prints one JSON line per part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.held import Floor, floor_plan, measure_held, tarefa_plan
from bench.procs import Group, free_port
from bench.systems.base import DEV_PYTHON, Deployment, bench_env
from bench.systems.tarefa_systems import TarefaEmbedded


def raw(protocol: str, params: dict[str, float]) -> dict[str, object]:
    port = free_port()
    command = [DEV_PYTHON, "-m", "bench.servers.raw_hold", str(port), protocol]
    proc = subprocess.Popen(command, env=bench_env())
    try:
        time.sleep(3)
        deployment = Deployment(
            [Group("server", roots=[proc.pid])], DEV_PYTHON, "", {"url": f"http://127.0.0.1:{port}"}
        )
        return measure_held(deployment, floor_plan, params)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=10_000)
    parser.add_argument("parts", nargs="*", default=["new=src", "floor", "raw-uvicorn", "raw-tarefa", "raw-parked"])
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    params = {"polls": args.polls, "jobs": 100, "lead_s": 30}
    outer = os.environ.get("PYTHONPATH", "")
    for part in args.parts:
        label, _, src = part.partition("=")
        if label.startswith("raw-"):
            figures = raw(label.removeprefix("raw-"), params)
        else:
            os.environ["PYTHONPATH"] = str(Path(src).resolve()) if src else outer
            system, plan = (Floor(), floor_plan) if label == "floor" else (TarefaEmbedded(), tarefa_plan)
            with tempfile.TemporaryDirectory() as workdir, system.deploy(Path(workdir), 100) as running:
                figures = measure_held(running, plan, params)
            os.environ["PYTHONPATH"] = outer
        keys = ("kb_per_wait", "cpu_pct_waiting", "answer_all_s", "answered", "errors")
        print(json.dumps({"part": label, **{k: figures[k] for k in keys}}), flush=True)


if __name__ == "__main__":
    main()
