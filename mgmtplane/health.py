"""The plane's side of health: keep each gateway's latest record, judge it (mgmtplane.events),
remember what changed (STATE_DIR/health/<id>.json, bounded), and serve it.

Routes (admin bearer, like everything under /v1/gateways):
  GET /v1/gateways/{id}/health          the latest record, its age, whether it is stale, the
                                        conditions raised now
  GET /v1/gateways/{id}/health/history  the state changes, newest last (at most events.HISTORY)
The gateway's records arrive as CONTROL "health" requests (protocol §13.1); the reply carries the
plane's clock, which is how the gateway measures its own skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from gwcore import health
from gwcore.control import ControlError, Message
from mgmtplane import events
from mgmtplane.errors import PlaneError
from mgmtplane.hub import Hub
from mgmtplane.registry import Registry, read_json, write_json_atomic
from mgmtplane.webhook import WebhookSender

log = logging.getLogger(__name__)

HEALTH_DIR = "health"
SILENCE_CHECK = 5.0  # seconds between checks for gateways gone quiet
MIN_SPACING = 1.0  # a gateway sending records faster than this is refused (they cost I/O here)
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what a gateway id may be to name a file


class HealthStore:
    """Latest records (memory), per-gateway state (memory and disk), and where events go."""

    def __init__(
        self,
        state_dir: Path,
        hub: Hub,
        registry: Registry,
        webhook: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
        down_after: float = events.DOWN_AFTER_MIN,
    ) -> None:
        self.dir = state_dir / HEALTH_DIR
        self.hub = hub
        self.registry = registry
        self.webhook = webhook
        self.clock = clock
        self.down_after = down_after  # the shortest silence that makes an appliance down
        self.started = clock()
        self.latest: dict[str, tuple[dict[str, Any], float]] = {}
        self.states: dict[str, events.GatewayState] = {}
        self.published: list[dict[str, Any]] = []  # for tests and the log; bounded
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plane-health")

    # --- state on disk ---------------------------------------------------------------------------

    def _path(self, gateway_id: str) -> Path:
        return self.dir / f"{gateway_id}.json"

    def load_all(self) -> None:
        """Read every stored gateway state (at start)."""
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else ():
            try:
                data = read_json(path, {})
            except PlaneError as exc:
                log.error("%s; its health history starts afresh", exc)
                data = {}
            self.states[path.stem] = events.GatewayState.from_json(data)

    def state(self, gateway_id: str) -> events.GatewayState:
        """The gateway's state (a fresh one the first time)."""
        state = self.states.get(gateway_id)
        if state is None:
            state = self.states[gateway_id] = events.GatewayState()
        return state

    async def _save(self, gateway_id: str) -> None:
        data = self.state(gateway_id).to_json()
        path = self._path(gateway_id)

        def write() -> None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_json_atomic(path, data, mode=0o600)

        try:
            await asyncio.get_running_loop().run_in_executor(self._io, write)
        except OSError as exc:
            log.warning("cannot save %s: %s", path, exc)

    def close(self) -> None:
        """Stop the I/O thread (after the last save)."""
        self._io.shutdown(wait=True)

    # --- events ----------------------------------------------------------------------------------

    def publish(self, found: list[events.Event]) -> None:
        """Log, keep and deliver events."""
        if not found:
            return
        bodies = [e.to_json() for e in found]
        for event in found:
            log.info("event %s %s: gateway %s: %s", event.type, event.state, event.gateway_id, event.summary)
        self.published.extend(bodies)
        del self.published[:-1000]
        if self.webhook is not None:
            self.webhook.enqueue(bodies)

    async def notice(self, gateway_id: str, kind: str, summary: str, detail: dict[str, Any]) -> None:
        """A one-off event about a gateway (a stored support bundle), kept in its history."""
        state = self.state(gateway_id)
        event = events.Event(events.new_id(), kind, events.NOTICE, gateway_id, self.clock(), summary, detail)
        state.history.append({k: v for k, v in event.to_json().items() if k != "gateway_id"})
        del state.history[: -events.HISTORY]
        await self._save(gateway_id)
        self.publish([event])

    # --- the control handler and the silence check --------------------------------------------

    async def on_health(self, gateway_id: str, message: Message) -> Message:
        """A gateway's record (CONTROL "health"): check, keep, judge; the reply carries our clock."""
        now = self.clock()
        previous = self.latest.get(gateway_id)
        if previous is not None and now - previous[1] < MIN_SPACING:
            raise ControlError("too-frequent", f"at most one health record every {MIN_SPACING:g} s")
        if not _ID.match(gateway_id):
            raise ControlError("bad-record", "this gateway id cannot be stored")
        try:
            record = health.parse_record(message)
        except health.RecordError as exc:
            log.warning("gateway %s: health record refused: %s", gateway_id, exc)
            raise ControlError("bad-record", str(exc)) from None
        self.latest[gateway_id] = (record, now)
        new = gateway_id not in self.states
        state = self.state(gateway_id)
        fingerprints = dict(state.fingerprints)
        found = events.on_record(gateway_id, state, record, now)
        if found or new or fingerprints != state.fingerprints:
            await self._save(gateway_id)
        self.publish(found)
        return {"type": health.HEALTH_ACK, "time": self.clock()}

    def check_silence(self) -> list[events.Event]:
        """appliance-down for every known gateway that has gone quiet for its grace period."""
        now = self.clock()
        found: list[events.Event] = []
        for gateway_id, state in self.states.items():
            since = max(state.last_seen or 0.0, self.started)
            found += events.on_silence(gateway_id, state, now, since, self.down_after)
        return found

    async def watch(self) -> None:
        """Check for silence every SILENCE_CHECK seconds, until cancelled."""
        while True:
            await asyncio.sleep(SILENCE_CHECK)
            found = self.check_silence()
            for gateway_id in {e.gateway_id for e in found}:
                await self._save(gateway_id)
            self.publish(found)

    # --- what the API shows ---------------------------------------------------------------------

    def summary(self, gateway_id: str) -> dict[str, Any]:
        """One line's worth: status, age, targets up, certificate days, clock, /var."""
        state = self.states.get(gateway_id)
        latest = self.latest.get(gateway_id)
        now = self.clock()
        conditions = sorted(state.conditions) if state is not None else []
        if latest is None:
            status = "down" if "appliance-down" in conditions else "unknown"
            return {"status": status, "age_s": None, "conditions": conditions}
        record, received = latest
        age = now - received
        stale = state is not None and age > events.down_grace(state, self.down_after)
        targets = record.get("targets") or []
        cert = record.get("certificate") or {}
        not_after = cert.get("not_after")
        status = "down" if stale or "appliance-down" in conditions else "degraded" if conditions else "ok"
        return {
            "status": status,
            "age_s": round(age, 1),
            "conditions": conditions,
            "targets_up": sum(1 for t in targets if health.target_usable(t)),
            "targets": len(targets) + int(record.get("targets_omitted") or 0),
            "cert_days": round((not_after - now) / 86400, 1) if isinstance(not_after, float) else None,
            "clock_offset_s": round(float(record["at"]) - received, 3),
            "var_percent": (record.get("system") or {}).get("var_percent"),
            "version": (record.get("appliance") or {}).get("image_version"),
        }

    async def _known(self, request: web.Request) -> str:
        gateway_id = request.match_info["gateway_id"]
        record = await asyncio.get_running_loop().run_in_executor(self._io, self.registry.get, gateway_id)
        if record is None:
            raise web.HTTPNotFound(
                text=f'{{"error": "gateway-unknown", "message": "no registered gateway {gateway_id}"}}',
                content_type="application/json",
            )
        return gateway_id

    async def get_health(self, request: web.Request) -> web.Response:
        """GET /v1/gateways/{id}/health."""
        gateway_id = await self._known(request)
        state = self.state(gateway_id) if gateway_id in self.states else events.GatewayState()
        latest = self.latest.get(gateway_id)
        now = self.clock()
        session = self.hub.session(gateway_id)
        body: dict[str, Any] = {
            "gateway_id": gateway_id,
            "connected": bool(session is not None and session.connected),
            "received_at": latest[1] if latest else None,
            "age_s": round(now - latest[1], 1) if latest else None,
            "stale_after_s": events.down_grace(state, self.down_after),
            "stale": latest is None or now - latest[1] > events.down_grace(state, self.down_after),
            "record": latest[0] if latest else None,
            "conditions": [{"key": k, **v} for k, v in sorted(state.conditions.items())],
            "summary": self.summary(gateway_id),
        }
        return web.json_response(body)

    async def get_history(self, request: web.Request) -> web.Response:
        """GET /v1/gateways/{id}/health/history."""
        gateway_id = await self._known(request)
        state = self.states.get(gateway_id)
        return web.json_response({"gateway_id": gateway_id, "history": state.history if state else []})


STORE_KEY = web.AppKey("plane_health", HealthStore)


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE_KEY]
    await asyncio.get_running_loop().run_in_executor(None, store.load_all)
    tasks = [asyncio.create_task(store.watch(), name="health-watch")]
    if store.webhook is not None:
        tasks.append(asyncio.create_task(store.webhook.run(), name="webhook"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    store.close()


def setup_health(app: web.Application, store: HealthStore) -> None:
    """Routes, the hub's "health" handler, the silence watch and the webhook worker."""
    app[STORE_KEY] = store
    store.hub.register_control(health.HEALTH, store.on_health)
    app.router.add_get("/v1/gateways/{gateway_id}/health", store.get_health)
    app.router.add_get("/v1/gateways/{gateway_id}/health/history", store.get_history)
    app.cleanup_ctx.append(_health_ctx)
