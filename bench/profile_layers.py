"""Where a server's CPU goes, by layer: a py-spy raw profile (``--format raw --threads``) summed
by the layer of each sample's innermost frame (its own time), per thread and in all.

    python -m bench.profile_layers PROFILE.txt [--top 25] [--src DIR] [--jobs N --rate 250]

A sample is a thread seen running (or runnable) at one tick; with ``--jobs`` and the sampling rate,
each layer's samples become milliseconds per job (wall time of busy threads: on a loaded machine
this includes time spent waiting for a core).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

#: The first pattern matching a frame's file names its layer (order matters).
LAYERS = [
    ("tarefa store", r"tarefa/store/"),
    ("tarefa http", r"tarefa/http/"),
    ("tarefa waiting", r"tarefa/waiting\.py"),
    ("tarefa model", r"tarefa/model\.py"),
    ("tarefa runner", r"tarefa/runner\.py|tarefa/operations\.py"),
    ("tarefa jobs/engine", r"tarefa/(jobs|engine|metrics|values|serving|logs)\.py"),
    ("bench app", r"bench/"),
    ("FastAPI", r"fastapi/"),
    ("pydantic", r"pydantic"),
    ("Starlette", r"starlette/"),
    ("uvicorn", r"uvicorn/"),
    ("asyncio", r"asyncio/|uvloop"),
    ("threads/queue", r"threading\.py|queue\.py|concurrent/"),
    ("stdlib", r"<frozen|python3\.\d+/|enum\.py|datetime|dataclasses|urllib"),
]
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def layer_of(file: str) -> str:
    for name, pattern in LAYERS:
        if re.search(pattern, file):
            return name
    return "other"


def waits(leaf: str) -> bool:
    """Frames where a thread waits (py-spy cannot tell idle threads here): the queue of a store
    thread, the event loop's select (uvloop's is C), a commit's fsync. Summarise a profile
    with the source it was taken of: the line numbers are looked up."""
    match = FRAME.match(leaf)
    if match is None:
        return False
    if leaf.startswith("Runner.run (asyncio/runners.py") or leaf.startswith("select (selectors"):
        return True
    line = _source_line(leaf)
    return any(marker in line for marker in ("_queue.get()", '"COMMIT"', "wait(", ".get(block"))


#: Where tarefa's source of the profiled server is (``--src``: an older checkout's).
SOURCE = [Path(__file__).resolve().parent.parent / "src"]


def _source_line(leaf: str) -> str:
    found = re.search(r"\(([^():]+):(\d+)\)$", leaf)
    if found is None:
        return ""
    name, number = found.group(1), int(found.group(2))
    for root in [SOURCE[0], *(Path(p) for p in sys.path if p)]:
        candidate = root / name
        if candidate.is_file():
            lines = candidate.read_text(errors="replace").splitlines()
            return lines[number - 1] if 0 < number <= len(lines) else ""
    return ""


def summarise(path: Path) -> tuple[dict[str, collections.Counter[str]], collections.Counter[str]]:
    by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    functions: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\w+\):?\s*", "", frames[0]).strip().strip('"')
        thread = re.sub(r"tarefa-op_\d+", "tarefa-op", thread)
        leaf = frames[-1]
        match = FRAME.match(leaf)
        file = match.group("file") if match else leaf
        count = int(count_text)
        by_thread[thread]["(waiting, not CPU)" if waits(leaf) else layer_of(file)] += count
        functions[leaf] += count
    return by_thread, functions


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=0, help="jobs the profile covers: adds ms per job")
    parser.add_argument("--rate", type=float, default=250.0, help="py-spy's samples per second")
    parser.add_argument("--src", type=Path, default=SOURCE[0], help="the profiled tarefa's src directory")
    args = parser.parse_args()
    SOURCE[0] = args.src
    by_thread, functions = summarise(args.profile)
    total = sum(sum(c.values()) for c in by_thread.values())
    everything: collections.Counter[str] = collections.Counter()
    print(f"{total} samples (own time of the innermost frame)\n")
    print("| thread | samples | share |\n|---|---|---|")
    for thread, counts in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        everything.update(counts)
        print(f"| {thread} | {sum(counts.values())} | {sum(counts.values()) / total:.0%} |")
    waiting = "(waiting, not CPU)"
    busy = total - everything[waiting] or 1
    main_thread = by_thread.get("MainThread", collections.Counter())
    main_busy = sum(main_thread.values()) - main_thread[waiting] or 1
    per_job = f" ms per job ({args.jobs} jobs, {args.rate:g} Hz) |" if args.jobs else ""
    print(f"\n| layer | share of busy samples | share of the main thread's |{per_job}")
    print("|---|---|---|" + ("---|" if args.jobs else ""))
    for layer, count in everything.most_common():
        shares = "| | |" if layer == waiting else f"| {count / busy:.1%} | {main_thread[layer] / main_busy:.1%} |"
        ms = f" {count / args.rate * 1000 / args.jobs:.3f} |" if args.jobs else ""
        print(f"| {layer} {shares}{ms}")
    print(f"\nTop {args.top} functions (own time):\n")
    for leaf, count in functions.most_common(args.top):
        print(f"- {count / total:.1%} {leaf}" + (" (waiting)" if waits(leaf) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
