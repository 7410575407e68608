"""Callbacks (SPEC §10): who may be called, how a call is signed, and the workers' delivery loop.

An asynchronous call may carry ``Callback-URL`` (and ``Callback-Events: all``); the job then
carries the subscription, and each event it asks for puts a delivery in the store's outbox in the
same transaction as the event (:mod:`tarefa.store.outbox`). A :class:`CallbackSender` runs beside
the runner of every process with workers: it claims due deliveries under a lease, POSTs each one
signed as Standard Webhooks says (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
records every attempt, and retries with exponential backoff and full jitter until
``retry_for`` has passed. ``2xx`` ends a delivery (delivered), ``410`` too (gone); a target that
resolves, at delivery, to an address the policy refuses ends it (refused). Each attempt is bounded
(connect and read timeouts, and an overall limit), at most ``concurrency`` run at once, and none
runs on a job's execution path: a slow receiver delays no job and no other delivery.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from standardwebhooks import Webhook

from . import model
from .backoff import Backoff
from .metrics import Metrics
from .store import JobChange, JobStore, StoreError
from .store.outbox import (
    ALL_EVENTS,
    DELIVERED,
    EXPIRED,
    FAILED,
    GONE,
    REFUSED,
    TERMINAL_EVENTS,
    CallbackAttempt,
    CallbackDelivery,
    wants,
)

log = logging.getLogger("tarefa.callbacks")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Longest Callback-URL accepted.
MAX_URL_LENGTH = 2048
#: Standard Webhooks secrets are 24 to 64 random bytes, base64, after ``whsec_``.
SECRET_BYTES = (24, 64)
SECRET_PREFIX = "whsec_"
#: Default pause rule between attempts: 5 s doubling to 1 h, full jitter.
DEFAULT_BACKOFF = Backoff(first=5.0, factor=2.0, cap=3600.0, jitter=1.0)


class CallbackRejected(ValueError):
    """A ``Callback-URL`` or ``Callback-Events`` that cannot be accepted: ``code`` for the error
    body, ``target`` the header."""

    def __init__(self, code: str, message: str, target: str = "Callback-URL") -> None:
        super().__init__(message)
        self.code = code
        self.target = target


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    """How this process accepts and delivers callbacks.

    ``secret`` signs every delivery (``whsec_...``; without one, a ``Callback-URL`` is refused
    with ``400 callbacks_not_configured``: nothing is ever sent unsigned); ``allow`` lists the
    networks a target may resolve to although they are not globally routable (loopback, private,
    link-local...); ``retry_for``: how long a delivery is retried; ``backoff``: the pause rule
    between attempts; ``concurrency``: attempts in flight at once per process.
    """

    secret: str | None = None
    allow: tuple[IPNetwork, ...] = ()
    retry_for: timedelta = timedelta(hours=24)
    backoff: Backoff = DEFAULT_BACKOFF
    concurrency: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    attempt_limit: float = 30.0
    _signer: Webhook | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.secret is not None:
            object.__setattr__(self, "_signer", Webhook(base64.b64encode(secret_bytes(self.secret)).decode()))
        if self.concurrency < 1:
            raise ValueError("callback concurrency must be at least 1")

    @property
    def signer(self) -> Webhook | None:
        return self._signer

    @classmethod
    def from_env(cls) -> CallbackSettings:
        """The settings of ``TAREFA_WEBHOOK_SECRET``, ``TAREFA_CALLBACK_ALLOW`` (CIDRs, comma-
        separated) and ``TAREFA_CALLBACK_RETRY_FOR`` (seconds); defaults for what is not set."""
        retry_for = os.environ.get("TAREFA_CALLBACK_RETRY_FOR")
        return cls(
            secret=os.environ.get("TAREFA_WEBHOOK_SECRET") or None,
            allow=parse_networks([os.environ.get("TAREFA_CALLBACK_ALLOW", "")]),
            retry_for=timedelta(hours=24) if not retry_for else timedelta(seconds=float(retry_for)),
        )


def secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (ValueError if it is not one)."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret must be 'whsec_' followed by base64") from None
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"the webhook secret must hold {low} to {high} bytes (base64 after 'whsec_'), not {len(key)}")
    return key


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``--callback-allow`` values (each may hold several, comma-separated) as networks."""
    networks: list[IPNetwork] = []
    for item in items:
        for text in filter(None, (part.strip() for part in item.split(","))):
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"{text!r} is not a network: give a CIDR such as 127.0.0.0/8 or ::1/128") from None
    return tuple(networks)


# -- who may be called ----------------------------------------------------------------------------


def subscription(url: str | None, events: str | None, settings: CallbackSettings) -> dict[str, str] | None:
    """The callback subscription of a request's headers, checked for syntax (the addresses are
    checked by :func:`check_target`); None without ``Callback-URL``."""
    if events is not None and events.strip().lower() not in (ALL_EVENTS, TERMINAL_EVENTS):
        raise CallbackRejected(
            "invalid_header", f"Callback-Events must be 'all' or 'terminal', not {events[:40]!r}", "Callback-Events"
        )
    if url is None:
        if events is not None:
            raise CallbackRejected("invalid_header", "Callback-Events needs a Callback-URL", "Callback-Events")
        return None
    if settings.signer is None:
        raise CallbackRejected(
            "callbacks_not_configured",
            "this server sends no callbacks: start it with --webhook-secret (or TAREFA_WEBHOOK_SECRET) to sign them",
        )
    target = parse_url(url)
    return {"url": str(target), "events": (events or TERMINAL_EVENTS).strip().lower()}


def parse_url(url: str) -> httpx.URL:
    """An absolute http(s) URL with a host, at most :data:`MAX_URL_LENGTH` characters."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRejected("invalid_callback_url", f"Callback-URL is longer than {MAX_URL_LENGTH} characters")
    try:
        target = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError):
        raise CallbackRejected("invalid_callback_url", f"Callback-URL {url[:80]!r} is not a URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise CallbackRejected(
            "invalid_callback_url", f"Callback-URL must be an absolute http or https URL with a host, not {url[:80]!r}"
        )
    return target


async def resolve(target: httpx.URL) -> list[IPAddress]:
    """Every address the URL's host resolves to (CallbackRejected if it resolves to none)."""
    host = target.host
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CallbackRejected("callback_url_unresolvable", f"the host {host!r} of Callback-URL: {exc}") from None
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def refused(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    """True for an address not globally routable (loopback, private, link-local, reserved,
    multicast — an IPv4-mapped IPv6 address as its IPv4 address) that ``allow`` does not cover."""
    plain: IPAddress = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        plain = address.ipv4_mapped
    if any(plain in network or address in network for network in allow):
        return False
    return not plain.is_global or plain.is_multicast


async def check_target(url: str, allow: Sequence[IPNetwork]) -> list[IPAddress]:
    """The addresses of the callback URL; CallbackRejected if any of them is refused."""
    addresses = await resolve(parse_url(url))
    bad = [address for address in addresses if refused(address, allow)]
    if bad:
        raise CallbackRejected(
            "callback_url_refused",
            f"Callback-URL resolves to {bad[0]}, a loopback, private or link-local address: "
            "the server refuses such targets unless started with --callback-allow CIDR",
        )
    return addresses


# -- signing --------------------------------------------------------------------------------------


def signed_headers(signer: Webhook, webhook_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(webhook_id, now, body.decode()),
        "user-agent": "tarefa-callbacks",
    }


# -- delivering -----------------------------------------------------------------------------------

#: Renders an outbox body (a snapshot) as the bytes to POST: ``{"event": ..., "job": ...}``.
Render = Callable[[bytes], bytes]


class CallbackSender:
    """Delivers the outbox's callbacks from this process (module doc)."""

    def __init__(
        self,
        store: JobStore,
        settings: CallbackSettings,
        render: Render,
        *,
        worker_id: str,
        lease_seconds: float,
        metrics: Metrics | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.render = render
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self.poll_seconds = poll_seconds or (5.0 if store.exclusive else 1.0)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        s = self.settings
        timeout = httpx.Timeout(s.read_timeout, connect=s.connect_timeout, pool=s.connect_timeout)
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, follow_redirects=False)
        self.store.add_listener(self.on_changes)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="tarefa-callbacks"),
            asyncio.create_task(self._lease_loop(), name="tarefa-callback-leases"),
        ]

    async def stop(self) -> None:
        """Stop delivering; deliveries in flight are due again at once for whoever runs next."""
        in_flight = list(self._in_flight)
        for task in [*self._tasks, *self._in_flight.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._in_flight.values(), return_exceptions=True)
        if in_flight:
            with contextlib.suppress(StoreError):
                await self.store.renew_callback_leases(self.worker_id, in_flight, 0.0)
        if self._client is not None:
            await self._client.aclose()

    def on_changes(self, changes: Sequence[JobChange]) -> None:
        """Store listener: a committed event that a callback asks for wakes the claim loop."""
        for change in changes:
            if change.job is not None and change.event is not None and wants(change.job, change.event):
                self._wake.set()
                return

    async def _claim_loop(self) -> None:
        recover = self.store.exclusive  # at start, what a crashed process had leased is ours
        while True:
            free = self.settings.concurrency - len(self._in_flight)
            self._wake.clear()
            claimed: list[CallbackDelivery] = []
            if free > 0:
                try:
                    claimed = await self.store.claim_callbacks(
                        self.worker_id, limit=free, lease_seconds=self.lease_seconds, recover=recover
                    )
                    recover = False
                except StoreError as exc:
                    log.warning("cannot claim callbacks: %s", exc)
            for delivery in claimed:
                self._in_flight[delivery.id] = asyncio.create_task(self._deliver(delivery))
            if len(claimed) < free or free <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.store.renew_callback_leases(self.worker_id, list(self._in_flight), self.lease_seconds)
            except StoreError as exc:
                log.warning("cannot renew the leases of callbacks in flight: %s", exc)

    async def _deliver(self, delivery: CallbackDelivery) -> None:
        try:
            attempt = await self.attempt(delivery)
            next_due = self._next_due(delivery, attempt)
            if next_due is None and attempt.outcome == FAILED:
                attempt = _with_outcome(attempt, EXPIRED)
            await self._record(attempt, next_due)
            if self.metrics is not None:
                self.metrics.callbacks.labels(attempt.outcome).inc()
            if next_due is not None:
                delay = max(0.0, (next_due - model.utcnow()).total_seconds())
                asyncio.get_running_loop().call_later(delay + 0.01, self._wake.set)
            _log(delivery, attempt)
        finally:
            self._in_flight.pop(delivery.id, None)
            self._wake.set()

    async def _record(self, attempt: CallbackAttempt, next_due: datetime | None) -> None:
        """Store the attempt; while the store fails, try again (the lease keeps the delivery ours)."""
        for n in range(8):
            try:
                await self.store.record_callback_attempt(attempt, next_due)
                return
            except StoreError as exc:
                log.warning("cannot record a callback attempt (%s): %s", attempt.delivery_id, exc)
                await asyncio.sleep(Backoff(first=0.1, cap=2.0).delay(n, random.random))

    def _next_due(self, delivery: CallbackDelivery, attempt: CallbackAttempt) -> datetime | None:
        """When to try again after a failed attempt; None when the delivery ends."""
        if attempt.outcome != FAILED:
            return None
        pause = timedelta(seconds=self.settings.backoff.delay(delivery.attempts, random.random))
        due = attempt.time + timedelta(seconds=attempt.duration) + pause
        return None if due > delivery.create_time + self.settings.retry_for else due

    async def attempt(self, delivery: CallbackDelivery) -> CallbackAttempt:
        """POST the delivery once (to an address checked now: DNS may have changed since)."""
        started, clock = model.utcnow(), time.monotonic()
        status: int | None = None
        error: str | None = None
        outcome = FAILED
        try:
            async with asyncio.timeout(self.settings.attempt_limit):
                addresses = await check_target(delivery.url, self.settings.allow)
                status = await self._post(delivery, addresses[0], started)
            outcome = DELIVERED if 200 <= status < 300 else GONE if status == 410 else FAILED
        except CallbackRejected as exc:
            error, outcome = str(exc), REFUSED if exc.code == "callback_url_refused" else FAILED
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except Exception as exc:  # a fault of ours: recorded and retried like any failure, and logged
            log.exception("callback %s of job %s: unexpected error", delivery.id, delivery.job_id)
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        duration = time.monotonic() - clock
        return CallbackAttempt(
            delivery.id, delivery.job_id, delivery.seq, delivery.url, started, duration, status, error, outcome
        )

    async def _post(self, delivery: CallbackDelivery, address: IPAddress, now: datetime) -> int:
        """POST to the checked address itself (Host and TLS name from the URL): the name is not
        looked up again between the check and the connection."""
        assert self._client is not None and self.settings.signer is not None
        url = httpx.URL(delivery.url)
        body = self.render(delivery.body)
        headers = signed_headers(self.settings.signer, delivery.id, body, now.astimezone(UTC))
        headers["host"] = url.netloc.decode("ascii")
        pinned = url.copy_with(host=str(address))
        response = await self._client.post(pinned, content=body, headers=headers, extensions={"sni_hostname": url.host})
        await response.aclose()
        return response.status_code


def _with_outcome(attempt: CallbackAttempt, outcome: str) -> CallbackAttempt:
    return dataclasses.replace(attempt, outcome=outcome)


def _log(delivery: CallbackDelivery, attempt: CallbackAttempt) -> None:
    level = logging.INFO if attempt.outcome in (DELIVERED, GONE) else logging.WARNING
    log.log(
        level,
        "callback %s of job %s to %s: %s (%s, %.0f ms)",
        delivery.id,
        delivery.job_id,
        delivery.url,
        attempt.outcome,
        attempt.status if attempt.status is not None else attempt.error,
        attempt.duration * 1000,
        extra={"job_id": delivery.job_id},
    )
