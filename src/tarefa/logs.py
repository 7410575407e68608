"""One log format for every line — uvicorn's and tarefa's — as text or JSON (SPEC §11).

:func:`configure_logging` puts one handler on the root logger; uvicorn's loggers hand their lines
to it. Two context variables say what a line is about: :data:`request_id_var` (set by the
request-id middleware for the whole of a request) and :data:`job_id_var` (set by the runner while
it runs a job). A line may also name them itself: ``log.info(..., extra={"job_id": job.id})``.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: The id of the request being served (None outside requests).
request_id_var: ContextVar[str | None] = ContextVar("tarefa_request_id", default=None)
#: The id of the job being run (None outside jobs).
job_id_var: ContextVar[str | None] = ContextVar("tarefa_job_id", default=None)

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class ContextFilter(logging.Filter):
    """Give every record ``request_id`` and ``job_id`` (from ``extra``, else the context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [request-id …] [job …]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id, job_id = getattr(record, "request_id", None), getattr(record, "job_id", None)
        tags = (f" [request-id {request_id}]" if request_id else "") + (f" [job {job_id}]" if job_id else "")
        if not tags:
            return line
        first, newline, rest = line.partition("\n")  # tags stay on the line, before a traceback
        return f"{first}{tags}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, and ``request_id``,
    ``job_id``, ``exception`` when there are."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")
        entry: dict[str, Any] = {
            "time": time.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "job_id"):
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Send every line of the process (tarefa's, uvicorn's, the application's) to stderr in
    ``log_format`` (``text`` or ``json``). Calling it again replaces the earlier setup."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _UVICORN_LOGGERS:  # uvicorn's lines go through the root handler, in the same format
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every request at INFO; tarefa's own line of each callback attempt says more.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def log_startup(*, store: str, workers: int, base_url: str | None, api: str = "/api") -> None:
    """The one start-up line: the store, the workers, and the URLs of the API, docs, dashboard."""
    log = logging.getLogger("tarefa")
    if base_url is None:
        log.info("tarefa worker started: store %s, %d worker(s)", store, workers)
        return
    base = base_url.rstrip("/")
    log.info(
        "tarefa serving: store %s, %d worker(s); API %s%s, docs %s/docs, dashboard %s/",
        store, workers, base, api, base, base,
    )  # fmt: skip
