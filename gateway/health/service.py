"""The operate lane on the appliance: a health record every interval, the support offer after a
run of failed reconnects, a watchdog on the control channel, and the reserved "@" streams.

The daemon makes one HealthService, calls `on_state` from the tunnel's state callback and
`on_reserved` for streams to reserved targets, and runs `run()` as a task. Everything the plane
sees goes through the tunnel's ControlChannel (protocol §13); a plane without `control.1`
never gets a record, and nothing else changes for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.filter.audit import COUNTS, DecisionCounts
from gateway.health import clock, record
from gateway.health.facts import SystemFacts
from gateway.health.probes import Prober
from gateway.health.support import DEFAULT_SOCKET, SupportBundles, health_entry
from gateway.relay.relay import Relay
from gateway.tunnel.client import State, TunnelClient
from gwcore import health, support_bundle
from gwcore import protocol as p
from gwcore.certs import CertInfo, cert_info, pem_to_der
from gwcore.control import ControlError
from gwcore.streams import Stream

log = logging.getLogger(__name__)

# Health records the plane leaves unanswered, in a row, on a link that still carries PINGs,
# before the gateway re-dials: the plane's loop answers PINGs, its application no longer anything.
STUCK_AFTER = 3
DEFAULT_OFFER_AFTER = 30  # failed reconnects in one outage before a support bundle is offered


class HealthService:
    """Collects, sends and keeps the latest health record; serves the reserved streams."""

    def __init__(
        self,
        client: TunnelClient,
        relay: Relay,
        *,
        interval: float,
        state_dir: Path,
        package_version: str,
        on_update: Callable[[], None] = lambda: None,
        offer_after: int = DEFAULT_OFFER_AFTER,
        support_socket: Path | None = None,
        support_files: tuple[str, ...] | None = None,
        support_tails: tuple[tuple[str, int], ...] | None = None,
        facts: SystemFacts | None = None,
        counts: DecisionCounts = COUNTS,
        audit_dropped: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.client = client
        self.relay = relay
        self.interval = interval
        self.cert_path = state_dir / "cert.pem"
        self.package_version = package_version
        self.on_update = on_update
        self.offer_after = offer_after
        # The bundle built here (without the helper) carries the latest record too.
        self.support = SupportBundles(
            support_socket or DEFAULT_SOCKET,
            files=support_files or support_bundle.FILES,
            tails=support_bundle.TAILS if support_tails is None else support_tails,
            extra=lambda: health_entry(self.latest),
        )
        self.facts = facts or SystemFacts()
        self.counts = counts
        self.audit_dropped = audit_dropped  # the audit file's lost lines (None: no file)
        self.prober = Prober()
        self.latest: dict[str, Any] | None = None
        self.acked_at: float | None = None
        self.plane_offset: float | None = None
        self.rtt_ms: float | None = None
        self.sent = 0
        self.offers = 0
        self._seq = 0
        self._started = time.monotonic()
        self._static: dict[str, object] | None = None
        self._cert: tuple[float, CertInfo | None] | None = None  # (mtime, info)
        self._policy_hash: tuple[object, str] | None = None
        self._wake = asyncio.Event()
        self._plane_takes_health = True
        self._unanswered = 0
        self._outage_failures = 0
        self._outage_error: str | None = None
        self._outage_since: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- wiring (called by the daemon) ---------------------------------------------------------

    def on_state(self, state: State) -> None:
        """The tunnel's state changed: count an outage's failures; on a new connection, send a
        record at once and offer a bundle if the outage was long."""
        client = self.client
        if state is State.BACKOFF:
            if self._outage_failures == 0:
                self._outage_since = time.time()
            self._outage_failures = max(self._outage_failures, client.failures)
            self._outage_error = client.last_error or self._outage_error
        elif state is State.CONNECTED:
            failures, self._outage_failures = self._outage_failures, 0
            self._plane_takes_health = True
            self._unanswered = 0
            self._wake.set()
            if failures >= self.offer_after:
                self._spawn(self._offer(failures, self._outage_error, self._outage_since))
            self._outage_error = self._outage_since = None

    def on_reserved(self, stream: Stream) -> None:
        """A stream the plane opened to a reserved ("@") target."""
        self.support.on_open(stream)

    async def close(self) -> None:
        """Cancel what runs (bundles, offers)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.support.close()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Every `interval` seconds (and at once on each new connection): collect, then send."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_at - loop.time()))
            self._wake.clear()
            next_at = loop.time() + self.interval
            try:
                self.latest = await self.collect()
            except Exception:  # a bug in one fact must not stop the others for ever
                log.exception("health record failed")
                continue
            self.on_update()
            await self.send(self.latest)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one record if the plane takes them; measure the clock against its answer."""
        channel = self.client.control
        if channel is None or not channel.ready or not self._plane_takes_health:
            return
        sent = time.time()
        try:
            reply = await channel.request(message, timeout=min(self.interval, 30.0))
        except ControlError as exc:
            if exc.code == "unknown-type":
                log.info("the plane does not take health records; not sending them on this connection")
                self._plane_takes_health = False
            elif exc.code == "timeout":
                self._unanswered += 1
                log.warning("health record %s: no answer (%d in a row)", message.get("seq"), self._unanswered)
                if self._unanswered >= STUCK_AFTER:
                    self._redial()
            elif exc.code != "disconnected":
                log.warning("health record refused by the plane: %s", exc)
            return
        received = time.time()
        self._unanswered = 0
        self.sent += 1
        plane_time = reply.get("time")
        if isinstance(plane_time, int | float) and not isinstance(plane_time, bool):
            self.plane_offset = clock.plane_offset(sent, received, float(plane_time))
        self.rtt_ms = round((received - sent) * 1000, 2)
        self.acked_at = received

    def _redial(self) -> None:
        mux = self.client.mux
        self._unanswered = 0
        if mux is not None and not mux.closed:
            log.warning("the plane answers PINGs but no health record: re-dialling the tunnel")
            mux.close(p.ErrorCode.GOING_AWAY, f"the plane left {STUCK_AFTER} health records unanswered")

    async def _offer(self, failures: int, last_error: str | None, since: float | None) -> None:
        channel = self.client.control
        if channel is None or not channel.ready:
            return
        message: dict[str, object] = {"type": health.SUPPORT_OFFER, "v": 1, "failures": failures}
        if last_error:
            message["last_error"] = last_error[:1024]
        if since is not None:
            message["since"] = since
        try:
            reply = await channel.request(message)
        except ControlError as exc:
            log.info("support offer not taken: %s", exc)
            return
        self.offers += 1
        log.info(
            "offered a support bundle after %d failed reconnects; the plane %s",
            failures,
            "fetches it" if reply.get("fetch") else "declined",
        )

    # --- collection ----------------------------------------------------------------------------

    def _own_cert(self) -> CertInfo | None:
        # Re-read when the file changes: a renewal replaces it while the daemon runs.
        try:
            mtime = self.cert_path.stat().st_mtime
        except OSError:
            return None
        if self._cert is None or self._cert[0] != mtime:
            try:
                info: CertInfo | None = cert_info(pem_to_der(self.cert_path.read_bytes()))
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", self.cert_path, exc)
                info = None
            self._cert = (mtime, info)
        return self._cert[1]

    def _policy_set_hash(self) -> str:
        policies = self.relay.filter.policies
        files = tuple(policies.files) if policies is not None else ()
        if self._policy_hash is None or self._policy_hash[0] is not policies:
            self._policy_hash = (policies, record.policy_hash(files))
        return self._policy_hash[1]

    async def collect(self) -> dict[str, Any]:
        """One record: the facts now, and every target probed."""
        if self._static is None:
            self._static = self.facts.static()
        now = time.time()
        sample = self.facts.sample()
        self.prober.own = self.relay.own
        commands, targets = await asyncio.gather(
            self.facts.commands(),
            self.prober.probe_all(self.relay.targets.targets.values(), self.relay.filter.policies),
        )
        cert = self._own_cert()
        problem = clock.explain(
            now,
            offset=self.plane_offset,
            ntp_synced=commands["ntp_synced"],
            cert_not_before=cert.not_before if cert else None,
            cert_not_after=cert.not_after if cert else None,
        )
        client = self.client
        mux = client.mux
        self._seq += 1
        # The peer's limit for a CONTROL payload, less room for the request's "id".
        limit = (mux.peer.max_header_block if mux is not None else p.Limits().max_header_block) - 64
        return record.build(
            at=now,
            seq=self._seq,
            interval=self.interval,
            appliance={
                **self._static,
                "package_version": self.package_version,
                "uptime_s": sample.pop("uptime_s"),
                "daemon_uptime_s": round(time.monotonic() - self._started, 1),
            },
            certificate={"not_before": cert.not_before, "not_after": cert.not_after} if cert else None,
            clock={
                "ntp_synced": commands["ntp_synced"],
                "ntp_offset_s": commands["ntp_offset_s"],
                "plane_offset_s": None if self.plane_offset is None else round(self.plane_offset, 4),
                "problem": problem,
            },
            system=sample,
            failed_units=commands["failed_units"],
            tunnel={
                "connects": client.connects,
                "connected_since": client.connected_at,
                "failures": client.failures,
                "streams_open": len(mux.streams) if mux is not None and not mux.closed else 0,
                "relayed": client.relayed,
                "last_error": client.last_error,
                "rtt_ms": self.rtt_ms,
            },
            filter_counts=record.filter_section(
                self.counts.snapshot(), self._policy_set_hash(), self.audit_dropped()
            ),
            targets=targets,
            max_bytes=limit,
        )

    def status_fields(self) -> dict[str, Any]:
        """What the status file shows of the latest record (empty before the first)."""
        if self.latest is None:
            return {}
        return record.status_fields(self.latest, self.acked_at)
