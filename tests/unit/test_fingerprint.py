"""The Idempotency-Key fingerprint is stored with the key: read from the scope, it must stay the
digest it was when built from Starlette's ``request.url`` and ``request.query_params``."""

from __future__ import annotations

import hashlib

import anyio
import pytest
from starlette.requests import Request

from tarefa.http.asynccall import _fingerprint


def _as_before(request: Request, body: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.url.path}\n".encode())
    query = sorted((k, v) for k, v in request.query_params.multi_items() if k != "return_timeout")
    digest.update(repr(query).encode())
    digest.update(body)
    return digest.hexdigest()


def _request(path: str, query: bytes, body: bytes) -> Request:
    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": query,
        "headers": [(b"host", b"127.0.0.1:8000")], "scheme": "http", "server": ("127.0.0.1", 8000), "root_path": "",
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/hosts", b""),
        ("/api/hosts", b"return_timeout=5"),
        ("/api/hosts", b"b=2&a=1&a=0&return_timeout=5&empty="),
        ("/api/h%20x/é", b"name=%C3%A9&x=a+b"),
        ("//double/slash", b"q=%ZZ&&=&k"),
        ("/a?b#c\\d", b"z"),
        ("/semi;colon/p", b"a=1;b=2"),
    ],
)
def test_the_fingerprint_is_the_digest_it_always_was(path: str, query: bytes) -> None:
    body = b'{"name": "n1"}'

    async def both() -> tuple[str, str]:
        fast = await _fingerprint(_request(path, query, body), "k")
        return fast.request_hash, _as_before(_request(path, query, body), body)

    fast, before = anyio.run(both)
    assert fast == before
