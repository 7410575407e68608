"""The callback options of ``tarefa serve`` and ``tarefa worker`` (SPEC §10, docs/callbacks.md)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .common import default

if TYPE_CHECKING:
    from ..engine import Engine

WebhookSecretOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option(
        "--webhook-secret",
        envvar="TAREFA_WEBHOOK_SECRET",
        show_envvar=True,
        help="Sign callbacks with this Standard Webhooks secret (whsec_<base64 of 24-64 bytes>); "
        "without one, a Callback-URL is refused",
    ),
]
CallbackAllowOption = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--callback-allow",
        help="Allow callbacks to this network although it is loopback, private or link-local (CIDR; repeatable; "
        "also TAREFA_CALLBACK_ALLOW, comma-separated)",
    ),
]
CallbackRetryForOption = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--callback-retry-for",
        min=0.0,
        envvar="TAREFA_CALLBACK_RETRY_FOR",
        help=f"Seconds a callback is retried before it is given up {default(86400)}",
    ),
]
CallbackBackoffOption = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--callback-backoff",
        min=0.001,
        envvar="TAREFA_CALLBACK_BACKOFF",
        help=f"Seconds before a callback's first retry, doubling each time (full jitter) {default(5)}",
    ),
]


def configure_callbacks(
    engine: Engine, secret: str | None, allow: list[str] | None, retry_for: float | None, backoff: float | None
) -> None:
    """Apply the options given over the engine's callback settings (ValueError if one is bad)."""
    from ..callbacks import parse_networks

    settings = engine.callback_settings
    changes: dict[str, Any] = {}
    if secret is not None:
        changes["secret"] = secret
    if allow:
        changes["allow"] = (*settings.allow, *parse_networks(allow))
    if retry_for is not None:
        changes["retry_for"] = timedelta(seconds=retry_for)
    if backoff is not None:
        changes["backoff"] = dataclasses.replace(settings.backoff, first=backoff)
    if changes:
        engine.configure(callbacks=dataclasses.replace(settings, **changes))
