"""Settings shared by :class:`~tarefa.client.Client` and :class:`~tarefa.client.AsyncClient`."""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import httpx

from ..backoff import Backoff
from .retry import RetryNotice

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_JOBS_PATH = "/api/jobs"


class ClientOptions(TypedDict, total=False):
    """Keyword options of both clients (all optional).

    - ``jobs_path``: where the jobs collection lives, resolved against the URL (``/api/jobs``);
      a job's ``_links.self.href`` or a ``Location`` header wins when the server gives one.
    - ``auth``: ``(user, password)`` for HTTP Basic authentication, or any :class:`httpx.Auth`;
      without one, the credentials ``$NETRC`` or ``~/.netrc`` gives for the server's host.
    - ``verify``: ``True`` (system CAs), ``False`` (no TLS verification), the path of a CA
      bundle (PEM), or an :class:`ssl.SSLContext`.
    - ``headers``: extra headers sent with every request.
    - ``retry_for``: how long one request keeps being retried while the server is unreachable
      or answers 429/502/503/504 (seconds, default 60; ``None``: until the call's timeout).
      The polls of ``wait``/``run`` ignore it: they follow the job through outages until the
      caller's ``timeout`` (``None``: as long as it takes).
    - ``http_timeout``: read timeout of ordinary requests (default 30 s); a long poll always
      gets its poll time plus ``poll_margin`` (default 15 s).
    - ``backoff``: the :class:`~tarefa.client.Backoff` policy between retries and empty polls.
    - ``on_retry``: called with a :class:`~tarefa.client.RetryNotice` before each retry (the
      call that failed, why, and the pause before the next attempt): to tell a person at once.
    - ``clock`` / ``random``: a monotonic clock and a ``[0, 1)`` source, for tests.
    """

    jobs_path: str
    auth: tuple[str, str] | httpx.Auth | None
    verify: bool | str | ssl.SSLContext
    headers: Mapping[str, str]
    retry_for: float | None
    http_timeout: float
    poll_margin: float
    backoff: Backoff
    on_retry: Callable[[RetryNotice], object] | None
    clock: Callable[[], float]
    random: Callable[[], float]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the client's logic needs to know, apart from how to do I/O."""

    url: httpx.URL
    jobs_path: str = DEFAULT_JOBS_PATH
    retry_for: float | None = 60.0
    http_timeout: float = 30.0
    connect_timeout: float = 10.0
    poll_margin: float = 15.0
    backoff: Backoff = field(default_factory=Backoff)
    on_retry: Callable[[RetryNotice], object] | None = None
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = random.random

    @classmethod
    def from_options(cls, url: str, options: ClientOptions) -> ClientConfig:
        if options.get("poll_margin", 1.0) <= 0:
            raise ValueError("poll_margin must be positive: the read timeout must outlast the poll")
        base = httpx.URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        names = ("jobs_path", "retry_for", "http_timeout", "poll_margin", "backoff", "on_retry", "clock", "random")
        chosen: dict[str, Any] = {name: value for name, value in options.items() if name in names}
        return cls(url=base, **chosen)

    def timeout(self, wait_seconds: float = 0.0) -> httpx.Timeout:
        """The timeouts of a request the server may hold for ``wait_seconds`` before answering."""
        read = max(self.http_timeout, wait_seconds + self.poll_margin)
        return httpx.Timeout(read, connect=self.connect_timeout)


def http_options(options: ClientOptions) -> dict[str, Any]:
    """The keyword arguments for :class:`httpx.Client` / :class:`httpx.AsyncClient`."""
    return {
        "auth": _auth(options.get("auth")),
        "verify": _verify(options.get("verify", True)),
        "headers": {"Accept": "application/json", **dict(options.get("headers", {}))},
        "follow_redirects": False,
    }


def _auth(auth: tuple[str, str] | httpx.Auth | None) -> httpx.Auth | None:
    if isinstance(auth, tuple):
        return httpx.BasicAuth(*auth)
    if auth is None and (netrc := _netrc_file()) is not None:
        return httpx.NetRCAuth(str(netrc))
    return auth


def _netrc_file() -> Path | None:
    """``$NETRC`` or ``~/.netrc``, if it exists: credentials for hosts it names (curl's rule)."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    return path if path.is_file() else None


def _verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify
