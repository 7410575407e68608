"""Reading answers and building URLs, pure: what the client's steps need of a server's answer
(the job in it, a page's next link) and of an address (a query added, a path segment added),
without parsing a URL where joining strings does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import orjson

from .drivers import Answer
from .errors import ProtocolError
from .job import Job

Params = tuple[tuple[str, str], ...]


def add_path(url: str, segment: str) -> str:
    return f"{url.rstrip('/')}/{segment}"


def with_query(url: str, params: Params) -> str:
    """``url`` with ``params`` added to its query (a parameter it already has is replaced)."""
    if not params:
        return url
    if "?" not in url:
        return url + "?" + "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params)
    parts = urlsplit(url)
    names = {name for name, _ in params}
    kept = [pair for pair in parse_qsl(parts.query, keep_blank_values=True) if pair[0] not in names]
    return urlunsplit(parts._replace(query=urlencode([*kept, *params], quote_via=quote)))


def add_query(url: str, query: str) -> str:
    """``url`` with an encoded ``query`` added: the poll's fast path."""
    return f"{url}&{query}" if "?" in url else f"{url}?{query}"


def read_json(response: Answer, where: str = "the server") -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"{where} answered {response.status_code} with a body that is not JSON") from None


def job_in_answer(response: Answer) -> Job | None:
    """The job in an answer to a call: ``{"job": ...}``, or a bare job in a ``202``; else ``None``."""
    body = read_json(response)
    location = response.headers.get("location")
    if not isinstance(body, Mapping):
        return None
    if "job" in body:
        return Job.from_wire(body["job"], location=location)
    if response.status_code == 202 and "id" in body:
        return Job.from_wire(body, location=location)
    return None


def read_job(response: Answer, method: str, url: str) -> Job:
    """The job in ``{"record": ...}``, ``{"job": ...}`` or a bare job body."""
    body = read_json(response, f"{method} {url}")
    if isinstance(body, Mapping):
        for envelope in ("record", "job"):
            if envelope in body:
                return Job.from_wire(body[envelope], location=response.headers.get("location"))
        if "id" in body:
            return Job.from_wire(body)
    raise ProtocolError(f"{method} {url} answered {response.status_code} without a job")


def next_href(body: Mapping[str, Any]) -> str | None:
    links = body.get("_links")
    following = links.get("next") if isinstance(links, Mapping) else None
    href = following.get("href") if isinstance(following, Mapping) else None
    return href if isinstance(href, str) and href else None
