"""The one log format: text and JSON lines carry the request id and the job id from context."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest

from tarefa.logs import ContextFilter, JsonFormatter, TextFormatter, configure_logging, job_id_var, request_id_var


def format_line(formatter: logging.Formatter, message: str, **extra: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tarefa.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, extra=extra or None)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().strip()


def test_json_line_takes_ids_from_context_and_extra() -> None:
    async def in_a_request() -> str:
        request_id_var.set("req-1")
        job_id_var.set("job-1")
        return format_line(JsonFormatter(), "one %s", job_id="job-2") + "\n" + format_line(JsonFormatter(), "two")

    first, second = (orjson.loads(line) for line in asyncio.run(in_a_request()).splitlines())
    assert first == {**first, "level": "warning", "logger": "tarefa.test-logs", "message": "one %s"}
    assert (first["request_id"], first["job_id"]) == ("req-1", "job-2")  # extra wins over the context
    assert (second["request_id"], second["job_id"]) == ("req-1", "job-1")
    assert first["time"].endswith("Z")
    outside = orjson.loads(format_line(JsonFormatter(), "three"))
    assert "request_id" not in outside and "job_id" not in outside  # the task's context stayed its own


def test_text_line_tags_ids_before_a_traceback() -> None:
    line = format_line(TextFormatter(), "started", job_id="abc")
    assert line.endswith("WARNING tarefa.test-logs: started [job abc]")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("xml")
