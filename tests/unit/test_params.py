"""Strict, brief parsing of query parameters and headers (issue 12, points 4, 9 and 10)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request

from tarefa.http.errors import ApiError
from tarefa.http.params import (
    ascii_integer,
    decode_cursor,
    encode_cursor,
    idempotency_key_from,
    parse_baseline,
    parse_fields,
    parse_order,
    parse_states,
    query_pairs,
)
from tarefa.model import from_microseconds


def cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "WzFlMzAsIngiXQ",  # [1e30,"x"]
        cursor_of([2**63 - 1, "x"]),
        cursor_of([2**70, "x"]),
        cursor_of([-(10**20), "x"]),
        cursor_of([-1e20, "x"]),
        cursor_of([True, "x"]),
        cursor_of([1, "a\u0000b"]),
        cursor_of([1, "x", 3]),
        cursor_of({"a": 1}),
        "%%%",
        "A" * 5000,
    ],
)
def test_a_forged_cursor_is_a_400_on_cursor(cursor: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_cursor(cursor)
    assert (caught.value.status, caught.value.code, caught.value.target) == (400, "invalid_parameter", "cursor")


def test_a_cursor_of_this_server_decodes_to_its_position() -> None:
    moment = from_microseconds(1_780_000_000_123_456)
    assert decode_cursor(encode_cursor(moment, "abc_-9")) == (moment, "abc_-9")


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "2026-11-28T14:00:00+99:99",
        "2026-11-28T14:00:00+24:00",
        "٢٠٢٦-11-28T14:00:00Z",  # Arabic-Indic digits
        "2026-02-30T14:00:00Z",
        "x" * 10_000,
    ],
)
def test_an_extreme_or_lenient_timestamp_is_a_400_with_a_short_message(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_baseline(text)
    assert (caught.value.status, caught.value.target) == (400, "last_modified")
    assert len(caught.value.message) < 300


def test_offsets_within_a_day_and_deploy_prefixes_are_taken() -> None:
    base = parse_baseline("2026-11-28T14:00:00Z")
    assert parse_baseline(">=2026-11-28T15:00:00+01:00") == base
    assert parse_baseline(">2026-11-28T14:00:00.000000000Z") == base
    assert parse_baseline("2026-11-29T13:59:00+23:59") == base


@pytest.mark.parametrize("text", ["5.0", "+3", "3 ", " 3", "-1", "٣", "1e2", "0x10", "", "1_0"])
def test_an_integer_parameter_is_plain_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError, match="ASCII digits"):
        ascii_integer(text)
    assert ascii_integer("30") == "30"


def test_ten_thousand_unknown_fields_get_a_short_message() -> None:
    with pytest.raises(ApiError) as caught:
        parse_fields(",".join(f"unknown{i}" for i in range(10_000)))
    assert caught.value.target == "fields" and len(caught.value.message) < 400
    assert "and 9997 more" in caught.value.message


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_fields, "id, state"),
        (parse_fields, "id,,state"),
        (parse_states, "queued | running"),
        (parse_states, ""),
        (parse_order, "create_time  desc"),
        (parse_order, "create_time DESC"),
    ],
)
def test_only_the_documented_form_of_a_list_parameter_is_taken(parse: object, text: str) -> None:
    with pytest.raises(ApiError):
        parse(text)  # type: ignore[operator]


def test_the_documented_forms_parse() -> None:
    assert parse_fields("id,message") == {"id", "message"} and parse_fields("**") is None
    assert parse_states("queued|running") == {"queued", "running"}
    assert parse_order("last_modified desc") == ("last_modified", True)
    assert parse_order("create_time") == ("create_time", False)


def request_with(*headers: tuple[bytes, bytes]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": list(headers)})


def test_an_idempotency_key_is_utf8_from_the_raw_header_bytes() -> None:
    assert idempotency_key_from(request_with((b"idempotency-key", "chave-ñ-✓".encode()))) == "chave-ñ-✓"
    assert idempotency_key_from(request_with()) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"idempotency-key", b"\xe9")],  # latin-1, not UTF-8
        [(b"idempotency-key", b"a"), (b"idempotency-key", b"b")],  # sent twice
        [(b"idempotency-key", b"")],
        [(b"idempotency-key", b"a\x7fb")],
        [(b"idempotency-key", "é".encode() * 300)],  # 300 characters
    ],
)
def test_a_bad_idempotency_key_is_a_400_on_the_header(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ApiError) as caught:
        idempotency_key_from(request_with(*headers))
    assert (caught.value.status, caught.value.target) == (400, "Idempotency-Key")


@given(st.text(alphabet="ab=&%+;2Fé \x00", max_size=30))
@example("a=1&&b=&c&=d&a=2")
@example("return_timeout=30")
@example("q=%2B+x&r=a%3Db")
def test_query_pairs_are_starlettes(text: str) -> None:
    """The query's pairs are Starlette's (``request.query_params.multi_items()``), fast path or not."""
    raw = text.encode("latin-1", "replace")
    scope = {"type": "http", "query_string": raw}
    assert query_pairs(scope) == Request({"type": "http", "query_string": raw}).query_params.multi_items()
    assert query_pairs(scope) is query_pairs(scope)  # parsed once per request
    scope["query_string"] = raw + b"&x=1"  # a layer gave the request another query: parsed again
    assert query_pairs(scope) == Request(dict(scope)).query_params.multi_items()
