"""Processes: start and stop them, find them, and read what they cost from ``/proc`` (Linux only).

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (clock ticks, usually 10 ms); peak memory is
``VmHWM`` from ``/proc/<pid>/status``, current memory ``VmRSS`` (or ``Pss`` from ``smaps_rollup``).
A process tree is a root and all its descendants, found through the parent ids in
``/proc/*/stat``; the root's ``cutime + cstime`` adds the children it has already reaped, so a
short-lived child is not lost.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from 3 (state) on; the name may hold spaces


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """CPU time of ``pid`` so far (0 if it is gone); with its reaped children's if asked."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def thread_cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU time of ``pid``'s live threads so far, to the nanosecond, and how many there are (0, 0
    if it is gone): the scheduler's own count (``/proc/<pid>/task/*/schedstat``), where
    :func:`cpu_seconds` counts clock ticks of 10 ms. A thread that has ended is not counted, so a
    caller compares the thread counts of two readings."""
    threads = cpu_by_thread(pid)
    return sum(threads.values()), len(threads)


def own_cpu_seconds() -> float:
    """This process's CPU so far, user + system (``getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_by_thread(pid: int) -> dict[int, float]:
    """CPU seconds so far of each live thread of ``pid`` by thread id, to the nanosecond
    (``/proc/<pid>/task/*/schedstat``); empty if it is gone."""
    seconds: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return seconds
    for task in tasks:
        try:
            seconds[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # ended between the listing and the reading
    return seconds


def memory_kb(pid: int, key: str = "VmHWM") -> int:
    """``VmHWM`` (peak resident set), ``VmRSS`` or ``Pss`` (resident set with each shared page
    divided among the processes that map it) of ``pid`` in KiB; 0 if it is gone."""
    source = "smaps_rollup" if key == "Pss" else "status"
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def pgrep(pattern: str) -> list[int]:
    """Pids whose full command line matches ``pattern`` (``pgrep -f``)."""
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(line) for line in done.stdout.split()]


@dataclass
class Usage:
    """What a group of processes cost over a measured span."""

    cpu_s: float = 0.0
    peak_rss_kb: int = 0
    rss_kb: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpu_s + other.cpu_s, self.peak_rss_kb + other.peak_rss_kb, self.rss_kb + other.rss_kb)


@dataclass
class Group:
    """A role in a benchmark (server, workers, Redis...) and how to find its processes.

    ``roots`` are process trees we started (every descendant counts, reaped ones too);
    ``find`` is a ``pgrep -f`` pattern for processes we did not start (Redis, PostgreSQL):
    those are counted from the first sample on, and a process found only later counts whole.
    """

    role: str
    roots: Sequence[int] = ()
    find: str | None = None
    _start: dict[int, float] = field(default_factory=dict)

    def pids(self) -> list[int]:
        found = [pid for root in self.roots for pid in descendants(root)]
        return found + (pgrep(self.find) if self.find else [])

    def _cpu(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid, reaped_children=pid in self.roots) for pid in self.pids()}

    def begin(self) -> None:
        self._start = self._cpu()

    def usage(self) -> Usage:
        """CPU since :meth:`begin`, peak memory (VmHWM; Pss now for shared servers), VmRSS now."""
        now = self._cpu()
        cpu = sum(value - self._start.get(pid, 0.0) for pid, value in now.items())
        # A shared server's lifetime peak says nothing about this run, and its processes share
        # their buffers (PostgreSQL's shared_buffers): count each shared page once, now.
        peak_key = "VmHWM" if self.roots else "Pss"
        peak = sum(memory_kb(pid, peak_key) for pid in now)
        return Usage(max(0.0, cpu), peak, sum(memory_kb(pid, "VmRSS") for pid in now))


def measure(groups: Iterable[Group]) -> dict[str, Usage]:
    return {group.role: group.usage() for group in groups}


def start(command: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``command`` in its own process group, output to ``log`` (or nowhere)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> None:  # fmt: skip
    """Call ``check()`` until it is true; fail with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail(log)}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s: {tail(log)}")


def tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
