"""Who is calling: the one place where a request becomes a :class:`~tarefa.jobs.Viewer`.

Every job route, the 202 helper and every later route get their viewer from :func:`viewer_of`.
It applies the identity function of the mounted :class:`~tarefa.Tarefa` (``identity=``): a
callable from the request to a :class:`~tarefa.users.User`, or None for "not signed in" (then
the answer is ``401``). Without one (no users configured), every caller is
:data:`~tarefa.jobs.ANYONE` and an ``Authorization`` header is ignored.

:func:`users_file_identity` is the identity of ``tarefa serve --users FILE``: HTTP Basic
authentication against the users file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request

from ..jobs import ANYONE, Viewer
from ..users import PasswordChecker, User
from .errors import ApiError

#: An application's identity: request → the user, or None when not signed in (→ 401). It may be
#: a coroutine function, e.g. one that awaits a FastAPI security scheme.
Identity = Callable[[Request], "User | Awaitable[User | None] | None"]

REALM = 'Basic realm="tarefa"'
_VIEWER = "tarefa_viewer"


async def viewer_of(request: Request) -> Viewer:
    """The viewer a request is made for (:class:`ApiError` 401 when not signed in)."""
    state: dict[str, Any] = request.scope.setdefault("state", {})  # request.state's own dict, read
    known: Viewer | None = state.get(_VIEWER)  # without State's AttributeError on a miss (issue 11)
    if known is not None:
        return known
    engine = getattr(request.app.state, "tarefa", None)
    identity: Identity | None = getattr(engine, "identity", None)
    viewer = ANYONE if identity is None else await _identify(identity, request)
    state[_VIEWER] = viewer
    return viewer


async def _identify(identity: Identity, request: Request) -> Viewer:
    found: Any = identity(request)
    if inspect.isawaitable(found):
        found = await found
    if found is None:
        raise unauthorized("not signed in: the credentials are missing or wrong (HTTP Basic: Authorization: Basic ...)")
    if not isinstance(found, User) or not found.name:
        raise TypeError(f"the identity function gave {found!r}: give a tarefa.User with a name, or None")
    return Viewer(found.name, found.admin)


def unauthorized(message: str) -> ApiError:
    """The SPEC's 401: the error body and ``WWW-Authenticate: Basic realm="tarefa"``."""
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": REALM})


#: A route parameter annotated with this gets the viewer (or the request is a 401).
Viewing = Annotated[Viewer, Depends(viewer_of)]
#: ``@app.get(path, dependencies=SIGNED_IN)``: a route only signed-in users may call (a 401
#: comes before any validation of the request).
SIGNED_IN = [Depends(viewer_of)]


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """``(name, password)`` from an ``Authorization: Basic`` header, None if absent or malformed."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, colon, password = decoded.partition(":")
    return (name, password) if colon else None


def users_file_identity(checker: PasswordChecker) -> Callable[[Request], Awaitable[User | None]]:
    """HTTP Basic authentication against a users file: the identity of ``tarefa serve --users``.
    The slow hash runs in a worker thread; a recent success is answered from the cache."""

    async def identity(request: Request) -> User | None:
        credentials = basic_credentials(request)
        if credentials is None:
            return None
        if (user := checker.cached(*credentials)) is not None:
            return user
        return await asyncio.to_thread(checker.check, *credentials)

    return identity
