"""The options every client command shares, declared once, and where their values come from.

Each option may be given before the subcommand (``tarefa --url URL jobs show ID``) or after it
(``tarefa jobs show ID --url URL``); after wins. An option not given comes from the environment
(``TAREFA_URL``, ``TAREFA_USER``, ...), then from the config file (``$TAREFA_CONFIG``, else
``~/.config/tarefa/config.toml``), then from its default — all read by one
:class:`ClientSettings` (pydantic-settings).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from ..client import DEFAULT_URL

if TYPE_CHECKING:
    from ..client import Client, RetryNotice

CONTEXT = "tarefa_context"  # the name under which Typer hands each wrapped command its context
EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3
ENV_PREFIX = "TAREFA_"


class Output(StrEnum):
    """How a client command prints what it got."""

    TEXT = "text"
    JSON = "json"


def default(text: object) -> str:
    """``[default: text]`` for a help text, escaped so that rich markup shows it."""
    return f"\\[default: {text}]"


# Every option is None unless given, so that the environment and the config file can fill it.
COMMON_OPTIONS = {
    "url": Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option("--url", help=f"Base URL of the API (TAREFA_URL) {default(DEFAULT_URL)}"),
    ],
    "user": Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--user", help="User for HTTP Basic authentication (TAREFA_USER)"),
    ],
    "password": Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--password", help="Password for HTTP Basic authentication (TAREFA_PASSWORD)"),
    ],
    "output": Annotated[
        Optional[Output],  # noqa: UP045
        typer.Option("--output", "-o", help=f"text for people, json for programs (TAREFA_OUTPUT) {default('text')}"),
    ],
    "timeout": Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--timeout", min=0.0, help="Give up after this many seconds; 3 when waiting (TAREFA_TIMEOUT)"),
    ],
    "ca_cert": Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--ca-cert", dir_okay=False, help="PEM file of the CA that signed the server's certificate"),
    ],
    "insecure": Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option("--insecure", "-k", help="Do not verify the server's TLS certificate", show_default=False),
    ],
    "retry_for": Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--retry-for", min=0.0, help=f"Seconds to retry an unreachable or busy server {default(10)}"),
    ],
}
"""The common options: name → annotation. The settings class below has one field per name."""


def config_file() -> Path:
    """Where the config file is: ``$TAREFA_CONFIG``, else ``$XDG_CONFIG_HOME/tarefa/config.toml``."""
    if os.environ.get("TAREFA_CONFIG"):
        return Path(os.environ["TAREFA_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "tarefa" / "config.toml"


@functools.cache
def _settings_class() -> type[Any]:
    """The pydantic-settings class, built on first use (the import costs ~0.2 s)."""
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

    class ClientSettings(BaseSettings):
        """The client commands' settings: options > ``TAREFA_*`` variables > config file > defaults."""

        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

        url: str = DEFAULT_URL
        user: str | None = None
        password: str | None = None
        output: Output = Output.TEXT
        timeout: float | None = Field(default=None, ge=0)
        ca_cert: Path | None = None
        insecure: bool = False
        retry_for: float = Field(default=10.0, ge=0)

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: Any, init_settings: Any, env_settings: Any, *_: Any, **__: Any
        ) -> Any:
            return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file())

    return ClientSettings


class Common:
    """The resolved common options of one client command, and the client they make."""

    def __init__(self, given: dict[str, Any]) -> None:
        self.given = given
        try:
            settings = _settings_class()(**given)
        except ValueError as exc:  # pydantic's ValidationError, a TOML syntax error
            fail(_settings_error(exc))
        self.url: str = settings.url
        self.user: str | None = settings.user
        self.password: str | None = settings.password
        self.output: Output = settings.output
        self.timeout: float | None = settings.timeout
        self.ca_cert: Path | None = settings.ca_cert
        self.insecure: bool = settings.insecure
        self.retry_for: float = settings.retry_for

    def source(self, name: str) -> str:
        """Where the value of ``name`` came from, as a person would look for it."""
        if name in self.given:
            return "--" + name.replace("_", "-")
        variable = ENV_PREFIX + name.upper()
        return variable if variable in os.environ else f"{name} in {config_file()}"

    def client(self, on_retry: Callable[[RetryNotice], object] | None = None) -> Client:
        """A :class:`~tarefa.client.Client` for these options; a bad one is one clear line."""
        from ..client import Client

        if self.ca_cert is not None and not self.ca_cert.is_file():
            fail(f"{self.source('ca_cert')}: {self.ca_cert} is not a file")
        verify: bool | str = False if self.insecure else str(self.ca_cert) if self.ca_cert else True
        auth = (self.user, self.password or "") if self.user else None
        try:
            return Client(self.url, auth=auth, verify=verify, retry_for=self.retry_for, on_retry=on_retry)
        except ValueError as exc:
            fail(f"{self.source('url')}: {exc}")
        except OSError as exc:
            fail(f"{self.source('ca_cert')}: cannot use {self.ca_cert} as a CA bundle: {exc}")


def _settings_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"cannot read the settings in {config_file()}: {exc}"
    problems = [_one_problem(error) for error in errors()]
    return "bad setting: " + "; ".join(problems)


def _one_problem(error: Any) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "?"
    where = f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def _merge(ctx: typer.Context, own: dict[str, Any]) -> dict[str, Any]:
    """The options given for this command: after the subcommand, else before it."""
    given: dict[str, Any] = {}
    for context in reversed(_contexts(ctx)):
        if isinstance(context.obj, dict):
            given.update(context.obj)
    given.update({name: value for name, value in own.items() if value is not None})
    return given


def _contexts(ctx: typer.Context) -> list[Any]:
    found: list[Any] = []
    current = ctx.parent
    while current is not None:
        found.append(current)
        current = current.parent
    return found


def with_common_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (which takes ``common: Common``) as a Typer command that also takes every
    common option; a callback (without ``common``) only records the options it was given."""
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for parameter in signature.parameters.values() if parameter.name != "common"]
    records = "common" not in signature.parameters

    @functools.wraps(command)
    def wrapper(*args: Any, **values: Any) -> None:
        given = {name: values.pop(name) for name in COMMON_OPTIONS}
        ctx: typer.Context = values.pop(CONTEXT)
        if records:
            ctx.obj = {name: value for name, value in given.items() if value is not None}
            command(*args, **values)
        else:
            command(*args, common=Common(_merge(ctx, given)), **values)

    common = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=None)
        for name, annotation in COMMON_OPTIONS.items()
    ]
    context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    parameters = [*own, *common, context]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"tarefa: {message}", err=True)
    raise typer.Exit(code)
