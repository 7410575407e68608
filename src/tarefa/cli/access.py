"""Access settings of ``tarefa serve`` and ``tarefa worker`` (SPEC §7): the users file, TLS,
and the rule that a server exposed beyond loopback needs users."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

if TYPE_CHECKING:  # the server's modules are imported by the commands that use them
    from ..http.access import Identity
    from ..users import PasswordChecker

UsersOption = Annotated[
    Optional[Path],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option("--users", envvar="TAREFA_USERS", help="Users file (tarefa user add): HTTP Basic sign-in"),
]
TlsCertOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM, with its chain)"),
]
TlsKeyOption = Annotated[Optional[Path], typer.Option("--tls-key", help="The private key of --tls-cert (PEM)")]  # noqa: UP045
MaxWaitingOption = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--max-waiting-per-user", min=1, help="Long polls open at once per user (429) [default: 1000]"),
]
MaxQueuedOption = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--max-queued-jobs", min=1, help="Queued jobs in the store before calls are 503 [default: 100000]"),
]


@dataclass(frozen=True, slots=True)
class Tls:
    certfile: str | None = None
    keyfile: str | None = None


def load_users(path: Path | None) -> PasswordChecker | None:
    """The users of the file (None: no users configured); a bad file is one line and exit 2."""
    from ..users import PasswordChecker, UsersFileError

    if path is None:
        return None
    try:
        return PasswordChecker.from_file(path)
    except UsersFileError as exc:
        fail(str(exc))


def tls_files(cert: Path | None, key: Path | None) -> Tls:
    """The certificate and key, both or neither, both readable."""
    if (cert is None) != (key is None):
        fail("give both --tls-cert and --tls-key, or neither")
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not path.is_file():
            fail(f"{option} {path}: no such file")
    return Tls(str(cert) if cert else None, str(key) if key else None)


def exposure_problem(host: str, users: bool, tls: bool) -> tuple[str, str] | None:
    """``("refuse" | "warn", why)`` when serving on ``host`` so is unsafe, None when it is fine."""
    from ..serving import is_loopback

    if is_loopback(host):
        return None
    if not users:
        return "refuse", (
            f"refusing to listen on {host} without users: anyone could reach every job. "
            "Give --users FILE (tarefa user add FILE NAME), or listen on loopback (127.0.0.1)"
        )
    if not tls:
        return "warn", (
            f"listening on {host} without TLS: passwords cross the network in clear text. "
            "Give --tls-cert/--tls-key, or put a TLS reverse proxy in front"
        )
    return None


def check_exposure(host: str, users: PasswordChecker | None, tls: Tls) -> None:
    """Refuse (exit 2) or warn, as :func:`exposure_problem` says."""
    problem = exposure_problem(host, users is not None, tls.certfile is not None)
    if problem is not None and problem[0] == "refuse":
        fail(problem[1])
    if problem is not None:
        typer.echo(f"tarefa: warning: {problem[1]}", err=True)


def identity_of(users: PasswordChecker | None) -> Identity | None:
    """The identity of ``--users`` (None: open access)."""
    from ..http.access import users_file_identity

    return None if users is None else users_file_identity(users)


def fail(message: str) -> NoReturn:
    typer.echo(f"tarefa: {message}", err=True)
    raise typer.Exit(2)
