"""The users file, the exposure rule of ``tarefa serve`` and the limits, without a server."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from tarefa.cli.access import exposure_problem
from tarefa.http.errors import ApiError
from tarefa.http.quotas import QueueLimit, WaitingLimit
from tarefa.users import (
    PasswordChecker,
    User,
    UserEntry,
    UsersFileError,
    add_user,
    hash_password,
    load_users,
    remove_user,
)


def test_the_users_file_round_trips_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    assert add_user(path, "alice", "s3cret") is True
    assert add_user(path, "root", "other", admin=True) is True
    assert add_user(path, "alice", "changed") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3cret" not in path.read_text() and "changed" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["users.json"]  # no temporary file left
    users = PasswordChecker.from_file(path)
    assert users.check("alice", "changed") == User("alice") and users.check("alice", "s3cret") is None
    assert users.check("root", "other") == User("root", admin=True)
    remove_user(path, "alice")
    assert set(load_users(path)) == {"root"}
    with pytest.raises(KeyError):
        remove_user(path, "alice")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "cannot read users file"),
        ('{"people": {}}', "is not one 'tarefa user add' wrote"),
        ('{"users": {"a": {"password_hash": "plain", "admin": false}}}', "no Argon2 password hash"),
        ('{"users": {"bad name": {"password_hash": "$argon2id$x"}}}', "user name 'bad name'"),
        ('{"users": {"a": {"password_hash": "$argon2id$x", "admin": "yes"}}}', "non-boolean admin"),
    ],
)
def test_a_bad_users_file_is_one_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "users.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsersFileError, match=message):
        load_users(path)


def test_bad_names_and_empty_passwords_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw")
    before = path.read_text()
    for name, password in (("", "pw"), ("a b", "pw"), ("x" * 65, "pw"), ("bob", "")):
        with pytest.raises(ValueError):
            add_user(path, name, password)
    assert path.read_text() == before and json.loads(before)["users"].keys() == {"alice"}


def test_the_password_cache_is_bounded() -> None:
    users = PasswordChecker({"alice": UserEntry(User("alice"), hash_password("pw"))}, cache_size=1)
    assert users.check("alice", "pw") is not None and users.cached("alice", "pw") is not None
    users._remember("bob", "x", User("bob"))
    assert users.cached("alice", "pw") is None and users.cached("bob", "x") == User("bob")


@pytest.mark.parametrize(
    ("host", "users", "tls", "expected"),
    [
        ("127.0.0.1", False, False, None),
        ("localhost", False, False, None),
        ("::1", False, False, None),
        ("127.0.0.2", False, False, None),
        ("0.0.0.0", False, False, "refuse"),
        ("0.0.0.0", False, True, "refuse"),
        ("192.0.2.10", True, False, "warn"),
        ("::", True, False, "warn"),
        ("0.0.0.0", True, True, None),
        ("example.org", True, True, None),
    ],
)
def test_the_exposure_rule(host: str, users: bool, tls: bool, expected: str | None) -> None:
    problem = exposure_problem(host, users, tls)
    assert (problem[0] if problem else None) == expected


def test_the_waiting_limit_counts_per_user_and_releases() -> None:
    limit = WaitingLimit(2, retry_after=3)
    with limit.hold("a"), limit.hold("a"), limit.hold("b"):
        with pytest.raises(ApiError) as refused, limit.hold("a"):
            pass
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "3"}
        assert limit.open_for("a") == 2
    assert limit.open_for("a") == limit.open_for("b") == 0
    with limit.hold(None), limit.hold(None), limit.hold(None):  # no users: no one to count for
        assert limit.open_for("") == 0


def test_the_queue_limit_counts_at_most_once_a_second() -> None:
    now, counts = [0.0], [0]

    async def count() -> int:
        counts[0] += 1
        return 5

    async def scenario() -> None:
        limit = QueueLimit(count, 6, clock=lambda: now[0])
        await limit.check()
        limit.added()  # 6 now, without asking the store
        with pytest.raises(ApiError) as refused:
            await limit.check()
        assert refused.value.status == 503 and "Retry-After" in refused.value.headers
        assert counts[0] == 1
        now[0] = 1.5
        await limit.check()  # counted again: 5
        assert counts[0] == 2

    asyncio.run(scenario())
