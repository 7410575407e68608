"""Run an application with uvicorn, stopping gracefully as SPEC §5 asks.

Once the app has started, the objects it made so far are frozen out of the garbage collector's
full passes (:func:`gc.freeze`): they live as long as the process.

On SIGTERM/SIGINT, uvicorn first waits for open requests to end and only then runs the app's
shutdown. A long poll may wait up to 120 s, so :class:`GracefulServer` first tells tarefa to
answer every waiting long poll *now* and to take no new jobs; then uvicorn closes, and the
lifespan shutdown lets running jobs finish for the grace period and releases the rest.

Against bad clients (:class:`ServerLimits`): a request body limit (413), header and body read
timeouts (408, see :mod:`tarefa.http.protocol`), the descriptor limit raised to the hard limit at
start, and a log line while descriptors run out (new connections are then refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import importlib.util
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from .http.held import HeldPolls
from .http.limits import DEFAULT_MAX_BODY, BodyLimitMiddleware
from .http.mount import Tarefa
from .http.protocol import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, ReadTimeouts, protocol_class
from .logs import configure_logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("tarefa.serving")
T = TypeVar("T")
_FD_DIR = "/proc/self/fd"
_FD_LISTED = sys.platform != "win32" and os.path.isdir(_FD_DIR)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may cost the server: body size (bytes) and read timeouts (seconds).

    Read from ``TAREFA_MAX_BODY``, ``TAREFA_HEADER_TIMEOUT`` and ``TAREFA_BODY_TIMEOUT`` by
    :meth:`from_env` when :func:`run` is given none."""

    max_body: int = DEFAULT_MAX_BODY
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_body < 0 or self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError(f"{self}: the body limit is 0 or more bytes, timeouts more than 0 s")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServerLimits:
        def read(name: str, kind: type[float], default: float) -> Any:
            text = environ.get(name)
            try:
                return default if text is None else kind(text)
            except ValueError:
                raise ValueError(f"{name}={text!r} is not a {kind.__name__}") from None

        return cls(
            max_body=read("TAREFA_MAX_BODY", int, DEFAULT_MAX_BODY),
            header_timeout=read("TAREFA_HEADER_TIMEOUT", float, DEFAULT_HEADER_TIMEOUT),
            body_timeout=read("TAREFA_BODY_TIMEOUT", float, DEFAULT_BODY_TIMEOUT),
        )


class GracefulServer(uvicorn.Server):
    """A uvicorn server that answers long polls at once when asked to stop."""

    def __init__(self, config: uvicorn.Config, tarefa: Tarefa | None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._should_exit = False
        super().__init__(config)
        self.tarefa = tarefa
        self._connections = self.server_state.connections = _Connections()

    @property
    def should_exit(self) -> bool:
        """uvicorn's flag, set by a signal (or by uvicorn itself); setting it wakes :meth:`main_loop`."""
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def main_loop(self) -> None:
        """Wait until told to stop. uvicorn's own loop wakes every 0.1 s, idle or not, to see
        whether it should stop and to make the date header again (10 wakes a second: ~2.3 ms of
        CPU a second here, issue 11 W6); the protocol makes the date header itself
        (:class:`~tarefa.http.protocol.DateClock`). With uvicorn's request limit or its notify
        callback (a supervisor's), uvicorn's loop runs: they need its tick."""
        if self.config.limit_max_requests is not None or self.config.callback_notify is not None:
            await super().main_loop()
            return
        self._stop = asyncio.Event()
        if not await self.on_tick(0):  # the first date header, and a stop asked for during startup
            await self._stop.wait()

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        watch = asyncio.create_task(_watch_descriptors(self._connections), name="tarefa-descriptors")
        try:
            await super().serve(sockets)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What the app built at import and startup (modules, routes, models: most of the heap)
        # lives as long as the process: out of the collector's full passes, which otherwise walk
        # it all each time while a burst of requests allocates (issue 11, W4: 0.17 -> 0.04 s of GC).
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.tarefa is not None and self._loop is not None and not self.should_exit:
            self._loop.call_soon_threadsafe(self.tarefa.begin_shutdown)
        super().handle_exit(sig, frame)


def tarefa_of(app: Any) -> Tarefa | None:
    """The Tarefa mounted on ``app`` (by :meth:`Tarefa.mount`), if any."""
    state = getattr(app, "state", None)
    found = getattr(state, "tarefa", None)
    return found if isinstance(found, Tarefa) else None


def load_app(reference: str) -> FastAPI:
    """``module:attribute`` → the app; a callable attribute that is not an app is called."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--app {reference!r}: use module:attribute, e.g. myservice.api:app")
    module = importlib.import_module(module_name)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"--app {reference!r}: module {module_name} has no attribute {attribute}") from None
    app = target if isinstance(target, FastAPI) or not callable(target) else target()
    if tarefa_of(app) is None:
        raise ValueError(f"--app {reference!r}: no Tarefa is mounted on it (call tarefa.mount(app))")
    return app  # type: ignore[no-any-return]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_descriptor_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard one; log and return the limit."""
    if sys.platform == "win32":
        return 0
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("file descriptors: cannot raise the limit of %d to %d: %s", soft, target, exc)
            target = soft
    log.info("file descriptors: limit %d (was %d; hard limit %s)", target, soft,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)  # fmt: skip
    return target


def open_descriptors() -> int:
    """This process's open descriptors: the size Linux (6.2+) gives ``/proc/self/fd``, else the
    count of its entries (listing 10,000 of them each second cost ~1 % of a core: issue 11, W5)."""
    size = os.stat(_FD_DIR).st_size
    return size if size > 0 else len(os.listdir(_FD_DIR))


def descriptor_use() -> tuple[int, int, bool]:
    """``(used, limit, crowded)``: this process's open descriptors, its soft limit, and whether
    so few are left (1 %, at least 4) that new connections may soon be refused."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        used = open_descriptors()
    except OSError:  # EMFILE: not even one descriptor left to list them
        used = limit
    return used, limit, used >= limit - max(4, limit // 100)


class _Connections(set):  # type: ignore[type-arg]
    """uvicorn's set of open connections (each protocol adds itself as it opens), which counts
    the descriptors as each connection opens (~4 µs) and says when they run short: no timer
    looks at them while they do not (each wake of an idle process cost ~0.2 ms of CPU here)."""

    __slots__ = ("crowded",)

    def __init__(self) -> None:
        super().__init__()
        self.crowded = asyncio.Event()

    def add(self, connection: Any) -> None:
        super().add(connection)
        if not self.crowded.is_set() and _FD_LISTED and descriptor_use()[2]:
            self.crowded.set()


async def _watch_descriptors(connections: _Connections, every: float = 1.0, quiet: float = 10.0) -> None:
    """Log (at most once per ``quiet`` seconds) while descriptors are all but used up: the server
    then refuses new connections (EMFILE on accept), which the event loop does without a word.
    It sleeps until a connection opens with few descriptors left, then looks every ``every``
    seconds until enough are free again."""
    if not _FD_LISTED:
        return
    last = -quiet
    while True:
        await connections.crowded.wait()
        used, limit, crowded = descriptor_use()
        if not crowded:
            connections.crowded.clear()
            continue
        if time.monotonic() - last >= quiet:
            last = time.monotonic()
            log.warning("file descriptors: %d of %d in use; new connections are refused (EMFILE) until some "
                        "close: raise the limit (ulimit -n) or lower the load", used, limit)  # fmt: skip
        await asyncio.sleep(every)


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_on_fastest_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop where it is installed (as :func:`run` serves): a worker's
    every store call waits on a socket, and uvloop's readers cost a fraction of the selector's."""
    if not _has_uvloop():
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080, access_log: bool = False,
        log_level: str = "info", log_format: str = "text", limits: ServerLimits | None = None,
        ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
        proxy_headers: bool = False) -> None:  # fmt: skip
    """Serve ``app`` (with its mounted Tarefa) until SIGTERM/SIGINT, then stop gracefully.

    ``limits`` (default: :meth:`ServerLimits.from_env`) bound what one client may cost; with
    ``ssl_certfile`` and ``ssl_keyfile``, it serves HTTPS. ``proxy_headers``: take the client's
    address and scheme from ``X-Forwarded-For``/``-Proto`` sent by a proxy on loopback (off
    by default: each request pays for the check, and nothing in tarefa needs them)."""
    configure_logging(log_format, log_level)
    raise_descriptor_limit()
    config = server_config(app, host=host, port=port, access_log=access_log, log_level=log_level, limits=limits,
                           ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, proxy_headers=proxy_headers)  # fmt: skip
    GracefulServer(config, tarefa_of(app)).run()


def server_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080, access_log: bool = False,
                  log_level: str = "info", limits: ServerLimits | None = None, ssl_certfile: str | None = None,
                  ssl_keyfile: str | None = None, proxy_headers: bool = False) -> uvicorn.Config:  # fmt: skip
    """uvicorn's configuration for :func:`run` (same arguments)."""
    limits = limits or ServerLimits.from_env()
    # Long polls parked without a task, asynchronous calls past the middleware stack, where nothing
    # would be skipped (tarefa.http.held): not behind proxy headers (they rewrite the client an
    # identity function may read) or trace logs.
    held = None if proxy_headers or log_level == "trace" else HeldPolls.of(app, limits.max_body)
    return uvicorn.Config(
        BodyLimitMiddleware(app, limits.max_body),
        host=host,
        port=port,
        loop="uvloop" if _has_uvloop() else "asyncio",
        http=protocol_class(ReadTimeouts(limits.header_timeout, limits.body_timeout), held),  # httptools
        proxy_headers=proxy_headers,
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        log_config=None,  # configure_logging: one format for uvicorn's lines and ours
        timeout_graceful_shutdown=10,
        timeout_keep_alive=130,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
