"""Settings shared by :class:`~tarefa.client.Client` and :class:`~tarefa.client.AsyncClient`."""

from __future__ import annotations

import base64
import netrc
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlsplit

from ..backoff import Backoff
from .retry import RetryNotice

if TYPE_CHECKING:
    import httpx

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
    - ``max_connections``: at most this many connections open to the server at once (default
      ``None``: no limit, so that many concurrent waits sharing one client never queue behind
      each other).
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
    max_connections: int | None
    on_retry: Callable[[RetryNotice], object] | None
    clock: Callable[[], float]
    random: Callable[[], float]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the client's logic needs to know, apart from how to do I/O."""

    url: str
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
        try:
            base = urlsplit(url)
            valid = base.scheme in ("http", "https") and bool(base.hostname)
            base.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        names = ("jobs_path", "retry_for", "http_timeout", "poll_margin", "backoff", "on_retry", "clock", "random")
        chosen: dict[str, Any] = {name: value for name, value in options.items() if name in names}
        return cls(url=url, **chosen)

    def read_timeout(self, wait_seconds: float = 0.0) -> float:
        """The read timeout of a request the server may hold for ``wait_seconds`` before answering."""
        return max(self.http_timeout, wait_seconds + self.poll_margin)


def http_options(options: ClientOptions) -> dict[str, Any]:
    """The keyword arguments for :class:`httpx.Client` / :class:`httpx.AsyncClient`."""
    import httpx

    limit = options.get("max_connections")
    return {
        "auth": _auth(options.get("auth")),
        "verify": _verify(options.get("verify", True)),
        "headers": {"Accept": "application/json", **dict(options.get("headers", {}))},
        "follow_redirects": False,
        "limits": httpx.Limits(max_connections=limit, max_keepalive_connections=limit, keepalive_expiry=4.0),
    }


def _auth(auth: tuple[str, str] | httpx.Auth | None) -> httpx.Auth | None:
    import httpx

    if isinstance(auth, tuple):
        return httpx.BasicAuth(*auth)
    if auth is None and (netrc := netrc_file()) is not None:
        return httpx.NetRCAuth(str(netrc))
    return auth


def netrc_file() -> Path | None:
    """``$NETRC`` or ``~/.netrc``, if it exists: credentials for hosts it names (curl's rule)."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    return path if path.is_file() else None


def _verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def basic_header(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def netrc_header(path: str, url: str) -> str | None:
    """The Basic header for the URL's host from a netrc file, as httpx's ``NetRCAuth`` reads it."""
    host = urlsplit(url).hostname or ""
    try:
        found = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return basic_header(found[0], found[2]) if found else None
