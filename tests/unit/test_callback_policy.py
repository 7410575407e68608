"""Who may be called back, and how (SPEC §10): the target policy, the secret, the headers."""

from __future__ import annotations

import base64
import ipaddress
from datetime import timedelta

import anyio
import pytest
from standardwebhooks import Webhook

from tarefa.callbacks import (
    CallbackRejected,
    CallbackSender,
    CallbackSettings,
    parse_networks,
    refused,
    secret_bytes,
    signed_headers,
    subscription,
)
from tarefa.model import utcnow
from tarefa.store import open_store
from tarefa.store.outbox import REFUSED, CallbackDelivery

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SIGNING = CallbackSettings(secret=SECRET)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1",
     "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "100.64.0.1", "224.0.0.1", "::"],
)  # fmt: skip
def test_addresses_that_are_not_public_are_refused(address: str) -> None:
    assert refused(ipaddress.ip_address(address), ())


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not refused(ipaddress.ip_address(address), ())


def test_callback_allow_lets_its_networks_through_and_only_those() -> None:
    allow = parse_networks(["127.0.0.0/8", "10.1.0.0/16, fd00::/8"])
    assert not refused(ipaddress.ip_address("127.0.0.1"), allow)
    assert not refused(ipaddress.ip_address("::ffff:127.0.0.1"), allow)  # the mapped form of an allowed one
    assert not refused(ipaddress.ip_address("fd00::5"), allow)
    assert refused(ipaddress.ip_address("10.2.0.1"), allow)
    assert refused(ipaddress.ip_address("::1"), allow)
    with pytest.raises(ValueError, match="not a network"):
        parse_networks(["127.0.0.1/33"])


def test_a_secret_is_whsec_and_24_to_64_bytes_of_base64() -> None:
    assert secret_bytes(SECRET) == b"k" * 32
    for bad in ("whsec_", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode(), "x" * 200):
        with pytest.raises(ValueError, match="webhook secret"):
            secret_bytes(bad)


def test_the_headers_verify_with_the_standardwebhooks_package() -> None:
    body = b'{"event": {}, "job": {}}'
    headers = signed_headers(SIGNING.signer, "msg_1", body, utcnow())  # type: ignore[arg-type]
    assert Webhook(SECRET).verify(body, headers) == {"event": {}, "job": {}}
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body + b" ", headers)


def test_a_subscription_needs_a_secret_a_good_url_and_a_known_events_value() -> None:
    assert subscription(None, None, CallbackSettings()) is None
    assert subscription("https://h.example.com/x", None, SIGNING) == {
        "url": "https://h.example.com/x",
        "events": "terminal",
    }
    assert subscription("https://h.example.com/x", "ALL", SIGNING)["events"] == "all"  # type: ignore[index]
    cases = {
        ("https://h.example.com/x", None, False): "callbacks_not_configured",
        ("ftp://h.example.com/x", None, True): "invalid_callback_url",
        ("http:///x", None, True): "invalid_callback_url",
        ("https://h.example.com/x", "sometimes", True): "invalid_header",
        (None, "all", True): "invalid_header",
    }
    for (url, events, signed), code in cases.items():
        with pytest.raises(CallbackRejected) as refusal:
            subscription(url, events, SIGNING if signed else CallbackSettings())
        assert refusal.value.code == code, (url, events)


def test_an_attempt_to_a_name_that_now_resolves_to_loopback_is_refused_without_a_request() -> None:
    """DNS rebinding: accepted while public, the name resolves to loopback at delivery."""

    async def attempt() -> str:
        store = open_store("memory://")
        await store.open()
        sender = CallbackSender(store, SIGNING, lambda body: body, worker_id="w", lease_seconds=30)
        await sender.start()
        try:
            delivery = CallbackDelivery("msg_x", "job", 1, "http://localhost:9/hook", b"{}", utcnow())
            made = await sender.attempt(delivery)
        finally:
            await sender.stop()
            await store.close()
        assert made.status is None and made.error is not None and "loopback" in made.error
        return made.outcome

    assert anyio.run(attempt) == REFUSED


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAREFA_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TAREFA_CALLBACK_ALLOW", "127.0.0.0/8,10.0.0.0/8")
    monkeypatch.setenv("TAREFA_CALLBACK_RETRY_FOR", "60")
    settings = CallbackSettings.from_env()
    assert settings.signer is not None and len(settings.allow) == 2 and settings.retry_for == timedelta(seconds=60)
