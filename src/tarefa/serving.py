"""Run an application with uvicorn, stopping gracefully as SPEC §5 asks.

On SIGTERM/SIGINT, uvicorn first waits for open requests to end and only then runs the app's
shutdown. A long poll may wait up to 120 s, so :class:`GracefulServer` first tells tarefa to
answer every waiting long poll *now* and to take no new jobs; then uvicorn closes, and the
lifespan shutdown lets running jobs finish for the grace period and releases the rest.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from .http.mount import Tarefa

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class GracefulServer(uvicorn.Server):
    """A uvicorn server that answers long polls at once when asked to stop."""

    def __init__(self, config: uvicorn.Config, tarefa: Tarefa | None) -> None:
        super().__init__(config)
        self.tarefa = tarefa
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

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


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080, access_log: bool = False,
        log_level: str = "info", ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:  # fmt: skip
    """Serve ``app`` (with its mounted Tarefa) until SIGTERM/SIGINT, then stop gracefully."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=130,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    GracefulServer(config, tarefa_of(app)).run()
