"""``tarefa user add|remove FILE NAME``: the users file of ``tarefa serve --users`` (SPEC §7).

Passwords come from a prompt (typed twice) or, with ``--password-stdin``, from the first line of
standard input; the file keeps only their Argon2 hashes (:mod:`tarefa.users`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..users import UsersFileError, add_user, check_name, remove_user

user = typer.Typer(help="Manage the users file of 'tarefa serve --users'.", no_args_is_help=True)

FileArgument = Annotated[Path, typer.Argument(help="The users file (created by the first 'add')")]
NameArgument = Annotated[str, typer.Argument(help="User name: letters, digits, '.', '_', '@' or '-'")]


@user.command("add")
def add(
    file: FileArgument,
    name: NameArgument,
    admin: Annotated[bool, typer.Option("--admin", help="The user sees every job (and their owners)")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input")
    ] = False,
) -> None:
    """Add a user, or set the password and admin flag of an existing one."""
    try:
        check_name(name)
        password = _read_password(password_stdin)
        new = add_user(file, name, password, admin=admin)
    except (UsersFileError, ValueError, OSError) as exc:
        _fail(str(exc))
    role = "administrator" if admin else "user"
    typer.echo(f"{'added' if new else 'updated'} {role} {name} in {file}")


@user.command("remove")
def remove(file: FileArgument, name: NameArgument) -> None:
    """Remove a user from the file."""
    try:
        remove_user(file, name)
    except KeyError:
        _fail(f"users file {file} has no user {name!r}")
    except (UsersFileError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"removed {name} from {file}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise ValueError("the password is empty: give one (on standard input with --password-stdin)")
    return password


def _fail(message: str) -> NoReturn:
    typer.echo(f"tarefa: {message}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``tarefa user`` to ``app``."""
    app.add_typer(user, name="user")
