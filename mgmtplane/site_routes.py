"""The site routes: `/v1/sites/{site}/targets/{target}/{path}` relays through one gateway of the
site, chosen per call (mgmtplane.sites), and fails over; `/v1/sites[/{site}]` shows the sites.

The facts the chooser needs are gathered here: the site's members (gateways.json, read again when
it changes), the admin-set priorities (sites.json, likewise), each tunnel's state from the hub
(connected, draining, open streams), the probe states of the fresh health records, and the
outcome of the last relay call per gateway and target. See docs/sites.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gwcore import protocol as p
from gwcore.stream import Stream
from gwcore.streams import StreamReset
from mgmtplane import events, sites
from mgmtplane.errors import PlaneError
from mgmtplane.health import STORE_KEY, HealthStore
from mgmtplane.hub import (
    HUB_KEY,
    STATUS_FOR_CODE,
    Hub,
    error_body,
    pump_body,
    request_head,
    send_response,
    wait_ready,
)
from mgmtplane.registry import GATEWAYS_FILE, REVOKED, Registry
from mgmtplane.site_store import SITES_FILE, Priorities, load_priorities

log = logging.getLogger(__name__)

SITE_RELAY_ROUTE = "/v1/sites/{site}/targets/{target}/{path:.*}"
Failure = tuple[int, str, str]  # status, error code, message
# Called with each stream opened for the call: the path's own bookkeeping, and the request body's
# pump if the call has a body.
OnOpen = Callable[[Stream], "asyncio.Task[None] | None"]
RELOAD_EVERY_S = 1.0  # how often the state files' stamps are looked at (at most; on a call)
_IDEMPOTENT = frozenset({"GET", "HEAD"})
MAX_OUTCOMES = 10_000  # (gateway, target) outcomes kept


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Opened:
    """A call that has its response head: the gateway, the stream, the head, the body's pump."""

    gateway_id: str
    stream: Stream
    rhead: p.ResponseHead
    pump: asyncio.Task[None] | None


class SiteRouter:
    """Chooses a gateway of a site for each call, and remembers how calls went."""

    def __init__(
        self,
        state_dir: Path,
        hub: Hub,
        registry: Registry,
        health: HealthStore | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.hub = hub
        self.registry = registry
        self.health = health
        self.clock = clock
        self.members: dict[str, list[str]] = {}  # site -> gateway ids (active ones)
        self.hostnames: dict[str, str] = {}
        self.priorities: Priorities = {}
        self.outcomes: dict[tuple[str, str], tuple[bool, float]] = {}  # (gateway, target) -> (ok, at)
        self.stats = {"calls": 0, "failovers": 0, "retries": 0, "failed": 0}
        self._stamps: tuple[Any, Any] = (None, None)
        self._checked = float("-inf")

    # --- facts ----------------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Read gateways.json and sites.json again if they changed (looked at once a second)."""
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_EVERY_S:
            return
        self._checked = now
        stamps = (_stamp(self.state_dir / GATEWAYS_FILE), _stamp(self.state_dir / SITES_FILE))
        if stamps == self._stamps:
            return
        try:
            records = self.registry.all()
            priorities = load_priorities(self.state_dir)
        except PlaneError as exc:
            log.error("sites: %s; keeping what was read before", exc)
            return
        members: dict[str, list[str]] = {}
        for record in records:
            if record.site and record.state != REVOKED:
                members.setdefault(record.site, []).append(record.gateway_id)
        self.members, self.priorities, self._stamps = members, priorities, stamps
        self.hostnames = {r.gateway_id: r.hostname for r in records}

    def probe(self, gateway_id: str, target: str) -> tuple[str | None, float]:
        """The target's probe state in the gateway's fresh health record and when that record came
        (None: no fresh record or the record omitted targets; "": not in its inventory)."""
        store = self.health
        latest = store.latest.get(gateway_id) if store is not None else None
        if store is None or latest is None:
            return None, 0.0
        record, received = latest
        state = store.states.get(gateway_id)
        grace = events.down_grace(state, store.down_after) if state is not None else store.down_after
        if store.clock() - received > grace:
            return None, 0.0
        for entry in record.get("targets") or ():
            if entry.get("name") == target:
                return str(entry.get("state", "")), received
        return (None, 0.0) if record.get("targets_omitted") else ("", received)

    def outcome(self, gateway_id: str, target: str) -> tuple[bool | None, float]:
        """The last relay outcome of the gateway to the target, if recent."""
        found = self.outcomes.get((gateway_id, target))
        if found is None or self.clock() - found[1] > sites.OUTCOME_TTL_S:
            return None, 0.0
        return found

    def note(self, gateway_id: str, target: str, ok: bool) -> None:
        """Remember how a call went (only outcomes that say something about the route count)."""
        now = self.clock()
        if len(self.outcomes) >= MAX_OUTCOMES and (gateway_id, target) not in self.outcomes:
            # Target names come from callers: unknown ones must not grow this without bound.
            fresh = {k: v for k, v in self.outcomes.items() if now - v[1] <= sites.OUTCOME_TTL_S}
            if len(fresh) >= MAX_OUTCOMES:
                newest = sorted(fresh.items(), key=lambda kv: kv[1][1])[MAX_OUTCOMES // 2 :]
                fresh = dict(newest)
            self.outcomes = fresh
        self.outcomes[(gateway_id, target)] = (ok, now)

    def candidates(self, site: str, target: str) -> list[sites.Candidate]:
        """Every gateway of the site as it stands now, for this target."""
        self.refresh()
        prios = self.priorities.get(site, {})
        out = []
        for gateway_id in self.members.get(site, ()):
            routed = self.hub.route(gateway_id)
            mux = routed[1] if routed is not None else None
            probe, probe_at = self.probe(gateway_id, target)
            outcome, outcome_at = self.outcome(gateway_id, target)
            out.append(
                sites.Candidate(
                    gateway_id=gateway_id,
                    connected=mux is not None,
                    draining=mux is not None and (mux.goaway_received is not None or mux.goaway_sent),
                    priority=prios.get(gateway_id, sites.DEFAULT_PRIORITY),
                    open_streams=len(mux.streams) if mux is not None else 0,
                    reach=sites.reach(probe, probe_at, outcome, outcome_at),
                )
            )
        return out

    # --- the relay route --------------------------------------------------------------------------

    async def open_call(
        self,
        site: str,
        target: str,
        method: str,
        head: p.RequestHead,
        has_body: bool,
        on_open: OnOpen,
    ) -> Opened | Failure:
        """Open the call on a gateway of the site and wait for the response head, failing over as
        docs/sites.md says; the opened call (the caller resets its stream and stops its pump when
        done), or the error to answer. Both public paths (aiohttp's, the lean one) call this."""
        self.refresh()
        if not sites.valid_site(site) or site not in self.members:
            return 404, "site-unknown", f"no gateway is enrolled in site {site!r}"
        self.stats["calls"] += 1
        # A call may go to a second gateway only when nothing of it can have had an effect: a
        # GET or HEAD without a body, or any call the first gateway never started (GOAWAY).
        retry_ok = method in _IDEMPOTENT and not has_body
        tried: list[str] = []
        retried = False
        last: Failure | None = None
        while True:
            cands = self.candidates(site, target)
            choice = sites.choose(cands, tried)
            if choice is None:
                self.stats["failed"] += 1
                return last or (503, "site-unavailable", sites.no_gateway_reason(site, cands, tried))
            gateway_id = choice.gateway_id
            tried.append(gateway_id)
            routed = self.hub.route(gateway_id)
            if routed is None:  # gone between the choice and now (cannot happen without an await)
                continue
            session, mux = routed
            if not mux.ready.is_set():
                await wait_ready(mux)
            try:
                stream = mux.open(head, fin=not has_body)
            except StreamReset as exc:
                # Refused before it started (draining, full, closed): not started, so it goes elsewhere.
                self.stats["failovers"] += 1
                last = (
                    STATUS_FOR_CODE.get(exc.code, 502),
                    str(exc.code),
                    f"gateway {gateway_id}: {exc.detail}",
                )
                continue
            except p.ProtocolError as exc:
                return 400, "bad-request", exc.message
            session.relayed += 1
            pump = on_open(stream)
            try:
                rhead = await stream.response()
            except StreamReset as exc:
                await stop_call(stream, pump)
                goaway = mux.goaway_received
                unstarted = goaway is not None and stream.id > goaway[0] and pump is None
                if str(exc.code) in sites.UNREACHABLE_CODES:
                    self.note(gateway_id, target, False)
                last = (
                    STATUS_FOR_CODE.get(exc.code, 502),
                    str(exc.code),
                    f"gateway {gateway_id}: {exc.detail}",
                )
                if unstarted:
                    self.stats["failovers"] += 1
                    continue
                if retry_ok and not retried and _worth_retrying(exc.code):
                    retried = True
                    self.stats["retries"] += 1
                    log.info(
                        "site %s: %s %s failed on %s (%s); retrying once",
                        site,
                        method,
                        target,
                        gateway_id,
                        exc.code,
                    )
                    continue
                self.stats["failed"] += 1
                return last
            except BaseException:
                await stop_call(stream, pump)
                raise
            self.note(gateway_id, target, True)
            return Opened(gateway_id, stream, rhead, pump)

    async def handle_relay(self, request: web.Request) -> web.StreamResponse:
        """ANY /v1/sites/{site}/targets/{target}/{path} on the aiohttp path (mgmtplane.front serves
        it on the lean path): the gateway route's semantics through a gateway of the site."""
        target = request.match_info["target"]
        head = request_head(request.method, target, request.raw_path, request.headers.items())
        opened = await self.open_call(
            request.match_info["site"],
            target,
            request.method,
            head,
            request.body_exists,
            lambda stream: asyncio.create_task(pump_body(request, stream)) if request.body_exists else None,
        )
        if not isinstance(opened, Opened):
            return _error(*opened)
        try:
            return await send_response(request, opened.stream, opened.rhead, opened.gateway_id)
        finally:
            await stop_call(opened.stream, opened.pump)

    # --- the admin view ---------------------------------------------------------------------------

    def show(self, site: str) -> dict[str, Any] | None:
        """GET /v1/sites/{site}'s body: the gateways, their tunnel, priority, load and reachability."""
        self.refresh()
        members = self.members.get(site)
        if members is None:
            return None
        prios = self.priorities.get(site, {})
        names: set[str] = set()
        for gateway_id in members:
            latest = self.health.latest.get(gateway_id) if self.health is not None else None
            if latest is not None:
                names.update(str(t.get("name")) for t in latest[0].get("targets") or ())
            names.update(t for (g, t), _v in self.outcomes.items() if g == gateway_id)
        by_target = {name: {c.gateway_id: c for c in self.candidates(site, name)} for name in sorted(names)}
        gateways = []
        for c in sorted(self.candidates(site, ""), key=lambda c: (-c.priority, c.gateway_id)):
            targets = {}
            for name, cands in by_target.items():
                probe, _at = self.probe(c.gateway_id, name)
                outcome, _when = self.outcome(c.gateway_id, name)
                targets[name] = {
                    "reach": cands[c.gateway_id].reach.name.lower(),
                    "probe": probe or None,
                    "last_call_ok": outcome,
                }
            gateways.append(
                {
                    "gateway_id": c.gateway_id,
                    "hostname": self.hostnames.get(c.gateway_id, ""),
                    "connected": c.connected,
                    "draining": c.draining,
                    "priority": c.priority,
                    "priority_set": c.gateway_id in prios,
                    "streams_open": c.open_streams,
                    "targets": targets,
                }
            )
        return {"site": site, "gateways": gateways, "stats": dict(self.stats)}

    async def get_site(self, request: web.Request) -> web.Response:
        """GET /v1/sites/{site}."""
        body = self.show(request.match_info["site"])
        if body is None:
            return _error(
                404, "site-unknown", f"no gateway is enrolled in site {request.match_info['site']!r}"
            )
        return web.json_response(body)

    async def list_sites(self, request: web.Request) -> web.Response:
        """GET /v1/sites: every site with its gateway count and how many are connected."""
        self.refresh()
        out = []
        for site, members in sorted(self.members.items()):
            connected = sum(1 for g in members if self.hub.route(g) is not None)
            out.append({"site": site, "gateways": len(members), "connected": connected})
        return web.json_response({"sites": out})


async def stop_call(stream: Stream, pump: asyncio.Task[None] | None) -> None:
    """Reset the call's stream (a no-op once it ended) and stop its request body's pump."""
    stream.reset(p.ErrorCode.CANCELLED, "caller went away")
    if pump is not None:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


def _worth_retrying(code: p.ErrorCode) -> bool:
    # The caller's own fault or the filter's verdict would be the same on any gateway.
    return code not in (p.ErrorCode.BAD_REQUEST, p.ErrorCode.FILTERED, p.ErrorCode.CANCELLED)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(code, message), content_type="application/json")


SITES_KEY = web.AppKey("plane_sites", SiteRouter)


def setup_sites(app: web.Application, state_dir: Path, registry: Registry) -> SiteRouter:
    """Add the site routes (after setup_hub and setup_operate)."""
    router = SiteRouter(state_dir, app[HUB_KEY], registry, app.get(STORE_KEY))
    app[SITES_KEY] = router
    app.router.add_get("/v1/sites", router.list_sites)
    app.router.add_get("/v1/sites/{site}", router.get_site)
    app.router.add_route("*", SITE_RELAY_ROUTE, router.handle_relay)
    return router
