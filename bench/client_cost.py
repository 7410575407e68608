"""What tarefa's client costs per job: CPU of the client process and HTTP requests, W1 and W2.

::

    python -m bench.client_cost [--workloads W1,W2] [--rounds 3] [--profile bench/profiles/NAME]

Each round starts a fresh ``tarefa serve --app bench.servers.tarefa_app:app`` on a SQLite file
(synchronous=FULL, access log on) and runs the bench's own client program
(``bench.clients.tarefa_client``: one shared ``AsyncClient``, every concurrent caller using it),
the same as ``python -m bench.run`` does for W1 (500 jobs, 1 caller) and W2 (3,000 jobs, 32
callers). Figures per workload, median over the rounds:

- ``client_cpu_ms_per_job``: the client process's own ``getrusage`` (user + system) over the
  workload, imports excluded, divided by the jobs done;
- ``requests_per_job``: the requests in the server's access log divided by the jobs done;
- ``jobs_per_s`` and ``p50_ms``, as ``bench.run`` reports them.

With ``--profile DIR``, one more round per workload runs the client under
``py-spy record --format raw`` (sampling at 500 Hz, the client only) and writes the raw stacks to
``DIR/<workload>.txt`` and a summary by layer (self time of the innermost frame, by the package
it is in) to ``DIR/<workload>.md``; the figures of a profiled round are not used.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.procs import free_port, start, stop, wait_for
from bench.systems.base import DEV_PYTHON, bench_env
from bench.systems.tarefa_systems import APP, TAREFA, answers

WORKLOADS = {"W1": {"jobs": 500, "concurrency": 1}, "W2": {"jobs": 3000, "concurrency": 32}}
CLIENT = "bench.clients.tarefa_client"
REQUEST_LINE = re.compile(r'"(GET|POST|PATCH|DELETE) [^ ]+ HTTP/1\.1" \d{3}')


def serve(stack: ExitStack, workdir: Path, workers: int) -> tuple[int, Path]:
    port = free_port()
    log = workdir / f"serve-{port}.log"
    store = f"sqlite:///{workdir / f'bench-{port}.db'}"
    command = [*TAREFA, "serve", "--port", str(port), "--store", store, "--app", APP, "--workers", str(workers)]
    proc = start([*command, "--access-log"], env=bench_env(), log=log)
    stack.callback(stop, proc)
    wait_for(lambda: answers(port), 60, "tarefa serve", proc, log)
    return port, log


def client_round(key: str, workdir: Path, profile: Path | None = None) -> dict[str, Any]:
    """One fresh server, one run of the client program; the figures of that run."""
    size = WORKLOADS[key]
    with ExitStack() as stack:
        port, log = serve(stack, workdir, max(4, size["concurrency"]))
        before = _requests(log)
        spec = {**size, "body": {"kind": "noop"}, "budget_s": 120, "options": {"urls": [f"http://127.0.0.1:{port}"]}}
        command = [DEV_PYTHON, "-m", CLIENT, json.dumps(spec)]
        if profile is not None:
            raw = profile / f"{key}.txt"
            command = ["py-spy", "record", "--format", "raw", "--rate", "500", "-o", str(raw), "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, env=bench_env(), timeout=600, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"client exited with {done.returncode}: {done.stderr[-2000:]}")
        outcome = json.loads(lines[-1])
        if "fatal" in outcome:
            raise RuntimeError(outcome["fatal"])
        requests = _requests(log) - before
    jobs = len(outcome["records"])
    latencies = sorted(seen - submitted for submitted, seen, _ in outcome["records"])
    wall = max(seen for _, seen, _ in outcome["records"]) - outcome["started"]
    return {
        "jobs": jobs,
        "errors": outcome["error_count"],
        "client_cpu_ms_per_job": outcome["client"]["cpu_s"] * 1000 / jobs,
        "requests_per_job": requests / jobs,
        "jobs_per_s": jobs / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
    }


def _requests(log: Path) -> int:
    return len(REQUEST_LINE.findall(log.read_text(errors="replace"))) if log.exists() else 0


# -- profiles -------------------------------------------------------------------------------------

LAYERS = [  # (layer, pattern on the frame's file), first match wins
    ("tarefa client", r"tarefa/client/"),
    ("bench driver", r"bench/clients/"),
    ("httpx", r"httpx/"),
    ("httpcore", r"httpcore/"),
    ("h11", r"h11/"),
    ("anyio + sniffio", r"(anyio|sniffio)/"),
    ("aiohttp", r"aiohttp/"),
    ("yarl + multidict + propcache", r"(yarl|multidict|propcache)/"),
    ("asyncio", r"asyncio/"),
    ("orjson", r"orjson"),
    ("tarefa (other)", r"tarefa/"),
]


def layer_of(frame: str) -> str:
    match = re.search(r"\((.*):\d+\)$", frame)
    where = match.group(1) if match else frame
    for layer, pattern in LAYERS:
        if re.search(pattern, where):
            return layer
    return "stdlib and other"


def summarize(raw: Path) -> str:
    """Markdown tables: samples by the layer of their innermost frame, and the busiest frames
    (imports, before the workload starts, left out)."""
    layers: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit() or "_find_and_load" in stack:
            continue
        leaf = stack.split(";")[-1]
        layers[layer_of(leaf)] += int(number)
        frames[leaf] += int(number)
    total = sum(layers.values()) or 1
    rows = [f"| {layer} | {n} | {100 * n / total:.1f} % |" for layer, n in layers.most_common()]
    top = [f"| `{frame}` | {100 * n / total:.1f} % |" for frame, n in frames.most_common(15)]
    return "\n".join(
        [
            "| layer (innermost frame) | samples | share |",
            "|---|---|---|",
            *rows,
            "",
            "| busiest frames (self) | share |",
            "|---|---|",
            *top,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also write py-spy profiles and summaries to this folder")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="client-cost-") as tmp:
        for key in args.workloads.split(","):
            rounds = [client_round(key, Path(tmp)) for _ in range(args.rounds)]
            report[key] = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
            report[key]["rounds"] = rounds
            print(key, json.dumps({k: round(v, 3) for k, v in report[key].items() if k != "rounds"}), file=sys.stderr)
            if args.profile is not None:
                if shutil.which("py-spy") is None:
                    raise SystemExit("py-spy is not installed: pip install py-spy")
                args.profile.mkdir(parents=True, exist_ok=True)
                figures = client_round(key, Path(tmp), args.profile)
                summary = summarize(args.profile / f"{key}.txt")
                size = WORKLOADS[key]
                title = f"# Client profile, {key} ({size['jobs']} jobs, {size['concurrency']} callers)"
                text = f"{title}\n\nProfiled round: {json.dumps({k: round(v, 3) for k, v in figures.items()})}\n\n"
                (args.profile / f"{key}.md").write_text(text + summary + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
