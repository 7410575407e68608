"""Access through real processes: ``tarefa user add/remove``, ``tarefa serve --users`` with the
exposure rule, HTTPS with a certificate made here, and the client and CLI over it."""

from __future__ import annotations

import json
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from secured import Secured, make_certificates, make_users_file, run_cli, servers, start_secured

from tarefa.client import Client, Unauthorized


@pytest.fixture
def started() -> Iterator[list[Secured]]:
    yield from servers()


def test_user_add_and_remove_keep_only_hashes_in_a_private_file(tmp_path: Path) -> None:
    users = make_users_file(tmp_path / "users.json")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    text = users.read_text()
    assert "alice-pw" not in text and "root-pw" not in text
    data = json.loads(text)["users"]
    assert data["root"]["admin"] is True and data["alice"]["admin"] is False
    assert data["alice"]["password_hash"].startswith("$argon2id$")
    removed = run_cli("user", "remove", str(users), "bob")
    assert removed.returncode == 0 and "bob" not in json.loads(users.read_text())["users"]
    again = run_cli("user", "remove", str(users), "bob")
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "no user 'bob'" in again.stderr
    for bad in (["user", "add", str(users), "bad name", "--password-stdin"], ["user", "add", str(users), "eve",
                "--password-stdin"]):  # fmt: skip
        result = run_cli(*bad, stdin="\n")
        assert result.returncode == 2 and result.stderr.startswith("tarefa: "), result.stderr
    assert set(json.loads(users.read_text())["users"]) == {"alice", "root"}  # refused: nothing changed


def test_serve_refuses_a_missing_or_bad_users_file_and_an_exposed_host_without_users(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    cases = {
        "does not exist": ["--users", str(tmp_path / "missing.json")],
        "cannot read users file": ["--users", str(tmp_path / "bad.json")],
        "refusing to listen on 0.0.0.0 without users": ["--host", "0.0.0.0"],  # refused before it binds
        "give both --tls-cert and --tls-key": ["--tls-cert", str(tmp_path / "bad.json")],
    }
    for expected, args in cases.items():
        result = run_cli("serve", "--store", f"sqlite:///{tmp_path}/t.db", *args)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


def test_users_over_plain_http_on_loopback(tmp_path: Path, started: list[Secured]) -> None:
    """(127.0.0.2 is loopback: no warning; the warning beyond loopback is unit-tested.)"""
    users = make_users_file(tmp_path / "users.json")
    server = start_secured(tmp_path, "--users", str(users), "--store", f"sqlite:///{tmp_path}/t.db",
                           host="127.0.0.2")  # fmt: skip
    started.append(server)
    assert "warning" not in server.log()
    assert httpx.get(f"{server.url}/api/jobs").status_code == 401
    assert httpx.get(f"{server.url}/api/jobs", auth=("alice", "alice-pw")).status_code == 200


def test_https_end_to_end_with_users_the_client_and_the_cli(tmp_path: Path, started: list[Secured]) -> None:
    certs = make_certificates(tmp_path, "127.0.0.2")
    users = make_users_file(tmp_path / "users.json")
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    server = start_secured(tmp_path, "--users", str(users), "--tls-cert", str(certs.cert), "--tls-key",
                           str(certs.key), "--store", f"sqlite:///{tmp_path}/t.db", host="127.0.0.2",
                           scheme="https", verify=trusted)  # fmt: skip
    started.append(server)
    assert "without TLS" not in server.log()
    with Client(server.url, auth=("alice", "alice-pw"), verify=str(certs.ca)) as alice:
        job = alice.submit("POST", "/api/hosts", json={"name": "esx-1", "address": "10.0.0.1"})
        assert alice.wait(job, timeout=30).state.value == "success"
    with Client(server.url, auth=("bob", "bob-pw"), verify=str(certs.ca), retry_for=0) as bob:
        assert list(bob.list()) == []
    with Client(server.url, auth=("alice", "wrong"), verify=str(certs.ca), retry_for=0) as wrong:
        with pytest.raises(Unauthorized):
            list(wrong.list())
    with pytest.raises(httpx.ConnectError):  # a certificate no CA of ours signed
        httpx.get(f"{server.url}/api/jobs")
    plain = f"http://{server.url.removeprefix('https://')}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/api/jobs")
    listed = run_cli("jobs", "list", "--url", server.url, "--ca-cert", str(certs.ca), "--user", "root",
                     "--password", "root-pw", "-o", "json")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [(job["operation"], job["owner"]) for job in json.loads(listed.stdout)] == [("host.register", "alice")]
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.2 login alice password alice-pw\n")
    netrc.chmod(0o600)
    from_netrc = run_cli("jobs", "list", "--url", server.url, "--insecure", "-o", "json", env={"NETRC": str(netrc)})
    assert from_netrc.returncode == 0, from_netrc.stderr
    assert [job["operation"] for job in json.loads(from_netrc.stdout)] == ["host.register"]
    unsigned = run_cli("jobs", "list", "--url", server.url, "--insecure", "--retry-for", "0",
                       env={"NETRC": str(tmp_path / "none")})  # fmt: skip
    assert unsigned.returncode == 2 and "not signed in" in unsigned.stderr, unsigned.stderr
