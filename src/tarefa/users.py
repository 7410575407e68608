"""Users of ``tarefa serve`` (SPEC §7): the users file and password checks; no HTTP in sight.

The users file is JSON, written atomically with mode 0600 by ``tarefa user add/remove``::

    {"users": {"alice": {"password_hash": "$argon2id$v=19$...", "admin": false}}}

Passwords are kept only as Argon2id hashes (argon2-cffi: slow, salted, made for passwords) and
checked in constant time. A successful check is remembered (:class:`PasswordChecker`) under a
keyed digest of name and password, so that a client polling every second does not pay the
slow hash on every request; a failed check is never remembered and always costs a hash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


class UsersFileError(Exception):
    """The users file is missing or not one tarefa wrote; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class User:
    """A user of the API: a name and whether that user is an administrator (sees every job)."""

    name: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class UserEntry:
    """One line of the users file: the user and the Argon2 hash of the password."""

    user: User
    password_hash: str


@functools.cache
def _dummy_hash() -> str:
    """Users whose name is not in the file are checked against this, so that they cost the same
    time (made on first use: a hash costs ~0.1 s, too much for every start of the CLI)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def check_name(name: str) -> str:
    """A valid user name (1..64 of letters, digits and ``._@-``), else :class:`ValueError`."""
    if not 0 < len(name) <= 64 or not set(name) <= _NAME_CHARACTERS:
        raise ValueError(f"user name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def hash_password(password: str) -> str:
    """The Argon2id hash of a password, as the users file keeps it."""
    if not password:
        raise ValueError("the password is empty")
    return _HASHER.hash(password)


# -- the file -------------------------------------------------------------------------------------


def load_users(path: Path) -> dict[str, UserEntry]:
    """The users of the file (:class:`UsersFileError` if it is missing or malformed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = f"users file {path} does not exist: create it with 'tarefa user add {path} NAME'"
        raise UsersFileError(message) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc}") from None
    try:
        return {name: _entry(name, fields) for name, fields in data["users"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UsersFileError(f"users file {path} is not one 'tarefa user add' wrote ({exc})") from None


def _entry(name: str, fields: dict[str, Any]) -> UserEntry:
    password_hash, admin = fields["password_hash"], fields.get("admin", False)
    if not isinstance(password_hash, str) or not password_hash.startswith("$argon2") or not isinstance(admin, bool):
        raise ValueError(f"user {name!r} has no Argon2 password hash or a non-boolean admin flag")
    return UserEntry(User(check_name(name), admin), password_hash)


def save_users(path: Path, users: dict[str, UserEntry]) -> None:
    """Write the users file atomically (a temporary file renamed over it), mode 0600."""
    data = {
        "users": {
            name: {"password_hash": entry.password_hash, "admin": entry.user.admin}
            for name, entry in sorted(users.items())
        }
    }
    directory = path.resolve().parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:  # mkstemp creates it 0600
            json.dump(data, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def add_user(path: Path, name: str, password: str, *, admin: bool = False) -> bool:
    """Add the user to the file (created if missing), or replace its password and flag; True if new."""
    users = load_users(path) if path.exists() else {}
    new = name not in users
    users[name] = UserEntry(User(check_name(name), admin), hash_password(password))
    save_users(path, users)
    return new


def remove_user(path: Path, name: str) -> None:
    """Remove the user from the file (:class:`KeyError` if it has no such user)."""
    users = load_users(path)
    if name not in users:
        raise KeyError(name)
    del users[name]
    save_users(path, users)


# -- checking -------------------------------------------------------------------------------------


class PasswordChecker:
    """Checks names and passwords against the users, remembering recent successes (module doc).

    Thread-safe: :meth:`check` is meant to run in a worker thread, the hash being slow.
    """

    def __init__(self, users: dict[str, UserEntry], *, cache_size: int = 1024) -> None:
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, User] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> PasswordChecker:
        return cls(load_users(path))

    def __len__(self) -> int:
        return len(self._users)

    def cached(self, name: str, password: str) -> User | None:
        """The user, if this name and password passed a check recently (cheap: no hash)."""
        digest = self._digest(name, password)
        with self._lock:
            user = self._cache.get(digest)
            if user is not None:
                self._cache.move_to_end(digest)
            return user

    def check(self, name: str, password: str) -> User | None:
        """The user if the password is theirs, else None (slow: one Argon2 verification)."""
        if (user := self.cached(name, password)) is not None:
            return user
        entry = self._users.get(name)
        try:
            _HASHER.verify(entry.password_hash if entry else _dummy_hash(), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        self._remember(name, password, entry.user)
        return entry.user

    def _digest(self, name: str, password: str) -> bytes:
        message = name.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _remember(self, name: str, password: str, user: User) -> None:
        with self._lock:
            self._cache[self._digest(name, password)] = user
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
