"""Event delivery to a webhook URL: at least once, signed, retried with bounded backoff.

Events wait in an outbox (in memory, mirrored to STATE_DIR/events/outbox.json so a plane restart
loses none) and go out one at a time, oldest first. A delivery succeeds on any 2xx answer; a
refused connection, a timeout or any other status is retried after min(CAP, BASE x 2^attempt)
seconds with full jitter, until the event is MAX_AGE old. The outbox holds MAX_QUEUE events; when
it is full the oldest is dropped (and logged), so a receiver that is gone for days cannot fill
the plane's disk. A receiver may see an event twice (a lost 200): the `id` says it is the same.

Each POST carries `X-Mgmtplane-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`
so the receiver can check that it came from this plane and is fresh (docs/operate.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mgmtplane.errors import PlaneError
from mgmtplane.registry import read_json, write_json_atomic

log = logging.getLogger(__name__)

OUTBOX = Path("events/outbox.json")
MAX_QUEUE = 1000
MAX_AGE = 24 * 3600.0
BASE = 1.0
CAP = 60.0
TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Mgmtplane-Signature"
EVENT_HEADER = "X-Mgmtplane-Event"
DELIVERY_HEADER = "X-Mgmtplane-Delivery"


@dataclass(frozen=True)
class WebhookConfig:
    """Where events go and the shared secret that signs them."""

    url: str
    secret: bytes
    ca_file: Path | None = None


def load_webhook_config(
    url: str | None, secret_file: Path | None, ca_file: Path | None
) -> WebhookConfig | None:
    """The `serve` options as a config (None without a URL); PlaneError on a bad one."""
    if not url:
        if secret_file is not None:
            raise PlaneError("--webhook-secret-file: needs --webhook-url")
        return None
    if not url.startswith(("https://", "http://")):
        raise PlaneError(f"--webhook-url: {url!r} must be an http:// or https:// URL")
    if secret_file is None:
        raise PlaneError("--webhook-url: needs --webhook-secret-file (events are signed)")
    try:
        secret = secret_file.read_bytes().strip()
    except OSError as exc:
        raise PlaneError(f"{secret_file}: cannot read the webhook secret: {exc.strerror}") from None
    if len(secret) < 16:
        raise PlaneError(f"{secret_file}: the webhook secret must be at least 16 bytes")
    if ca_file is not None and not ca_file.is_file():
        raise PlaneError(f"--webhook-ca-file: {ca_file}: file not found")
    return WebhookConfig(url, secret, ca_file)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """A receiver's check (used by the tests, and a model for receivers): the MAC and the age."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


class WebhookSender:
    """The outbox and its one delivery worker."""

    def __init__(
        self,
        config: WebhookConfig,
        state_dir: Path,
        *,
        base: float = BASE,
        cap: float = CAP,
        max_queue: int = MAX_QUEUE,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.path = state_dir / OUTBOX
        self.base, self.cap, self.max_age = base, cap, max_age
        self.clock = clock
        self.max_queue = max_queue
        self.queue: deque[dict[str, Any]] = deque()
        self.delivered = 0
        self.dropped = 0
        self.attempts = 0
        self._wake = asyncio.Event()
        self._load()

    def _load(self) -> None:
        try:
            data = read_json(self.path, [])
        except PlaneError as exc:
            log.error("%s; starting with an empty outbox", exc)
            data = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self.queue.append(item)
        if self.queue:
            log.info("webhook: %d undelivered events from before the restart", len(self.queue))

    def _save(self) -> None:
        try:
            write_json_atomic(self.path, list(self.queue), mode=0o600)
        except OSError as exc:
            log.warning("webhook: cannot save the outbox %s: %s", self.path, exc)

    def enqueue(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Queue events for delivery (the oldest are dropped beyond max_queue)."""
        if not events:
            return
        for event in events:
            self.queue.append({**event, "queued_at": self.clock()})
        while len(self.queue) > self.max_queue:
            gone = self.queue.popleft()
            self.dropped += 1
            log.warning("webhook: outbox full, dropped event %s (%s)", gone.get("id"), gone.get("type"))
        self._save()
        self._wake.set()

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.config.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.config.ca_file))
        return True

    async def run(self) -> None:
        """Deliver until cancelled."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            attempt = 0
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                event = self.queue[0]
                if self.clock() - float(event.get("queued_at", 0)) > self.max_age:
                    self.queue.popleft()
                    self.dropped += 1
                    log.error(
                        "webhook: event %s undelivered after %.0f s, dropped", event["id"], self.max_age
                    )
                    self._save()
                    attempt = 0
                    continue
                if await self._post(session, event):
                    self.queue.popleft()
                    self.delivered += 1
                    self._save()
                    attempt = 0
                    continue
                # Full jitter: many planes' retries to one receiver do not arrive in step.
                delay = random.uniform(0, min(self.cap, self.base * 2**attempt))
                attempt = min(attempt + 1, 30)
                await asyncio.sleep(delay)

    async def _post(self, session: aiohttp.ClientSession, event: Mapping[str, Any]) -> bool:
        body = json.dumps({k: v for k, v in event.items() if k != "queued_at"}, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "mgmtplane-webhook/1",
            EVENT_HEADER: str(event.get("type")),
            DELIVERY_HEADER: str(event.get("id")),
            SIGNATURE_HEADER: signature(self.config.secret, int(self.clock()), body),
        }
        self.attempts += 1
        try:
            async with session.post(self.config.url, data=body, headers=headers, ssl=self._ssl()) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    log.info("webhook: delivered %s %s", event.get("type"), event.get("id"))
                    return True
                log.warning(
                    "webhook: %s answered %d for event %s", self.config.url, resp.status, event.get("id")
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("webhook: %s: %s", self.config.url, exc or type(exc).__name__)
        return False
