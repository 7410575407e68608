"""A small reader of server-sent event streams for the tests (over httpx, line by line)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class Frame:
    """One frame of a stream: an event (``id``, ``event``, ``data``) or a comment."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comment: bool = False

    @property
    def record(self) -> dict[str, Any]:
        return orjson.loads("\n".join(self.data))  # type: ignore[no-any-return]


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The frames of a streamed response, as they come (comments too)."""
    frame = Frame()
    for line in response.iter_lines():
        if not line:
            if frame.data or frame.id is not None:
                yield frame
            frame = Frame()
        elif line.startswith(":"):
            yield Frame(comment=True)
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "data":
                frame.data.append(value)


def stream_headers(last_event_id: int | None = None, **more: str) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", **more}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


def read_events(
    client: httpx.Client, url: str, *, last_event_id: int | None = None, count: int | None = None,
    idle: float | None = None, **kw: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """The event records of one connection: until ``count`` events, until ``idle`` seconds pass
    with only comments, or until the server ends the stream."""
    records: list[dict[str, Any]] = []
    with client.stream("GET", url, headers=stream_headers(last_event_id), **kw) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        quiet_since = time.monotonic()
        for frame in frames(response):
            if frame.comment:
                if idle is not None and time.monotonic() - quiet_since > idle:
                    break
                continue
            assert frame.event == "job" and frame.id is not None
            record = frame.record
            assert str(record["seq"]) == frame.id
            records.append(record)
            quiet_since = time.monotonic()
            if count is not None and len(records) >= count:
                break
    return records


def all_event_pages(
    client: httpx.Client, base: str, *, auth: tuple[str, str] | None = None, **params: str
) -> list[dict[str, Any]]:
    """Every record of ``GET {base}/api/events`` (JSON pages, following ``_links.next``)."""
    records: list[dict[str, Any]] = []
    href: str | None = "/api/events"
    first = True
    while href is not None:
        query = {"max_records": "1000", **params} if first else None
        answer = client.get(base + href, params=query, auth=auth) if auth else client.get(base + href, params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        records += body["records"]
        href = body["_links"].get("next", {}).get("href")
        first = False
    return records
