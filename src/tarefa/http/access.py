"""Who is calling: the one place where a request becomes a :class:`~tarefa.jobs.Viewer`.

Every job route, the 202 helper and every later route get their viewer from :func:`viewer_of`.
Until users are configured (SPEC §7), every caller is :data:`~tarefa.jobs.ANYONE`.
"""

from __future__ import annotations

from starlette.requests import Request

from ..jobs import ANYONE, Viewer


def viewer_of(request: Request) -> Viewer:
    """The viewer a request is made for."""
    return ANYONE
