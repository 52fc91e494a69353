"""Rollouts on the running plane (docs/updates.md; the messages are docs/protocol.md §13.5).

State lives in the state dir, written atomically under its lock, so the CLI (`mgmtplane rollout
start/halt/resume`) and `serve` share it without a restart:
- `rollouts.json`: the current rollout (what the operator asked for, what the planner decided:
  admitted gateways, halted and why, its phase) and the last few before it;
- `update-status.json`: each gateway's last `update-status`, with the plane's time of receipt.

The plane's task re-plans every PLAN_INTERVAL seconds and at once on each `update-status` and
each new tunnel (mgmtplane.rollout_plan decides; this module only reads, writes and sends). An
offer goes to a gateway when it differs from the last one sent on its current tunnel, so every
new tunnel hears its offer once (after the identity's `ca-update`, which the hub's earlier
on-connect callback sends first).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gwcore import update as um
from gwcore.control import ControlChannel, ControlError, Message
from mgmtplane.errors import PlaneError
from mgmtplane.hub import HUB_KEY, GatewaySession, Hub
from mgmtplane.registry import GATEWAYS_FILE, REVOKED, read_json, state_lock, write_json_atomic
from mgmtplane.releases import Release, load_releases
from mgmtplane.rollout_plan import Facts, Phase, Plan, Rollout, Window, plan, window

log = logging.getLogger(__name__)

ROLLOUTS_FILE = "rollouts.json"
STATUS_FILE = "update-status.json"
PLANE_FILE = "plane.json"  # the URL `serve` advertises (mgmtplane.cli)
PLAN_INTERVAL = 2.0  # seconds between planning rounds (windows open, CLI changes)
HISTORY = 20  # finished or replaced rollouts kept in rollouts.json
SCOPES = ("all", "site", "gateways")

StateIO = Callable[..., Awaitable[Any]]


# --- rollouts.json ---------------------------------------------------------------------------------


def new_rollout_id(now: dt.datetime | None = None) -> str:
    """r-YYYYmmddHHMMSS-xxxx: sortable, unique enough for one plane."""
    now = now or dt.datetime.now(dt.UTC)
    return f"r-{now:%Y%m%d%H%M%S}-{secrets.token_hex(2)}"


def rollout_to_json(r: Rollout) -> dict[str, Any]:
    """The operator's request and the planner's decisions, as stored."""
    return {
        "id": r.id,
        "version": r.version,
        "scope": r.scope,
        "site": r.site,
        "gateways": list(r.gateways),
        "canaries": list(r.canaries),
        "max_parallel": r.max_parallel,
        "windows": {site: w.to_json() for site, w in sorted(r.windows.items())},
        "halt_on_failure": r.halt_on_failure,
        "urgent": r.urgent,
        "downgrade": r.downgrade,
        "admitted": list(r.admitted),
        "halted": r.halted,
        "excused": dict(r.excused),
    }


def _strings(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlaneError(f"{path}: current.{key}: expected a list of gateway ids")
    return tuple(value)


def _window(path: Path, site: str, raw: Any) -> Window:
    what = f"{path}: current.windows.{site}"
    if not isinstance(raw, dict):
        raise PlaneError(f"{what}: expected an object")
    try:
        days = frozenset(int(d) for d in raw["weekdays"])
        start = dt.time.fromisoformat(str(raw["start"]))
        end = dt.time.fromisoformat(str(raw["end"]))
        return window(str(raw["tz"]), days, start, end, what)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlaneError(f"{what}: expected tz, weekdays (0 = Monday), start and end HH:MM ({exc})") from None


def rollout_from_json(path: Path, data: Any) -> Rollout:
    """A stored rollout; PlaneError naming the file and key when it is malformed."""
    if not isinstance(data, dict):
        raise PlaneError(f"{path}: current: expected an object")
    rid, version, scope = data.get("id"), data.get("version"), data.get("scope")
    if not um.valid_rollout_id(rid):
        raise PlaneError(f"{path}: current.id: expected a rollout id")
    if not um.valid_version(version):
        raise PlaneError(f"{path}: current.version: expected a release version")
    if scope not in SCOPES:
        raise PlaneError(f"{path}: current.scope: expected one of {', '.join(SCOPES)}")
    max_parallel = data.get("max_parallel", 1)
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        raise PlaneError(f"{path}: current.max_parallel: expected a count of at least 1")
    windows = data.get("windows") or {}
    excused = data.get("excused") or {}
    if not isinstance(windows, dict) or not isinstance(excused, dict):
        raise PlaneError(f"{path}: current.windows/excused: expected objects")
    halted = data.get("halted")
    return Rollout(
        id=str(rid),
        version=str(version),
        scope=str(scope),
        site=str(data["site"]) if data.get("site") is not None else None,
        gateways=_strings(path, data, "gateways"),
        canaries=_strings(path, data, "canaries"),
        max_parallel=max_parallel,
        windows={str(site): _window(path, str(site), raw) for site, raw in windows.items()},
        halt_on_failure=bool(data.get("halt_on_failure", True)),
        urgent=bool(data.get("urgent", False)),
        downgrade=bool(data.get("downgrade", False)),
        admitted=_strings(path, data, "admitted"),
        halted=str(halted) if halted is not None else None,
        excused={str(k): float(v) for k, v in excused.items() if isinstance(v, int | float)},
    )


class RolloutStore:
    """rollouts.json: the current rollout (with its phase) and the history."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / ROLLOUTS_FILE

    def _raw(self) -> dict[str, Any]:
        data = read_json(self.path, {})
        if not isinstance(data, dict):
            raise PlaneError(f"{self.path}: expected a JSON object")
        return data

    def current(self) -> tuple[Rollout | None, dict[str, Any]]:
        """The current rollout and its stored record (phase, reason, created_at …), or (None, {})."""
        raw = self._raw().get("current")
        if raw is None:
            return None, {}
        return rollout_from_json(self.path, raw), raw

    def history(self) -> list[dict[str, Any]]:
        """Earlier rollouts, newest first."""
        history = self._raw().get("history") or []
        return [h for h in history if isinstance(h, dict)]

    def replace_current(self, rollout: Rollout, now: str) -> dict[str, Any] | None:
        """Make `rollout` the current one (caller holds the lock); returns the one it replaced."""
        data = self._raw()
        old = data.get("current")
        history = [h for h in (data.get("history") or []) if isinstance(h, dict)]
        if isinstance(old, dict):
            if old.get("phase") not in (Phase.DONE, Phase.HALTED):
                old = {**old, "phase": "superseded", "reason": f"replaced by {rollout.id}"}
            history.insert(0, {**old, "ended_at": now})
        record = {
            **rollout_to_json(rollout),
            "phase": Phase.CANARY if rollout.canaries else Phase.RUNNING,
            "reason": None,
            "created_at": now,
            "updated_at": now,
        }
        write_json_atomic(self.path, {"current": record, "history": history[:HISTORY]})
        return old if isinstance(old, dict) else None

    def save(self, rollout: Rollout, phase: str, reason: str | None, now: str) -> None:
        """Store the current rollout's decisions (caller holds the lock)."""
        data = self._raw()
        current = data.get("current")
        old: dict[str, Any] = current if isinstance(current, dict) else {}
        data["current"] = {
            **old,
            **rollout_to_json(rollout),
            "phase": str(phase),
            "reason": reason,
            "updated_at": now,
        }
        write_json_atomic(self.path, data)


def in_use(state_dir: Path) -> Callable[[str], str | None]:
    """For `release remove`: the unfinished rollout that targets a version, if any."""

    def check(version: str) -> str | None:
        rollout, raw = RolloutStore(state_dir).current()
        if rollout is not None and rollout.version == version and raw.get("phase") != Phase.DONE:
            return f"rollout {rollout.id} ({raw.get('phase')})"
        return None

    return check


# --- update-status.json ----------------------------------------------------------------------------


def load_statuses(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Each gateway's last update-status record (as stored)."""
    path = state_dir / STATUS_FILE
    data = read_json(path, {})
    gateways = data.get("gateways", {}) if isinstance(data, dict) else None
    if not isinstance(gateways, dict):
        raise PlaneError(f"{path}: gateways: expected an object")
    return {str(k): v for k, v in gateways.items() if isinstance(v, dict)}


def record_status(
    state_dir: Path, gateway_id: str, status: um.UpdateStatus, received_at: float
) -> dict[str, Any]:
    """Store a gateway's update-status; returns its previous record ({} if none)."""
    with state_lock(state_dir):
        statuses = load_statuses(state_dir)
        previous = statuses.get(gateway_id, {})
        statuses[gateway_id] = {**status.record(), "received_at": received_at}
        write_json_atomic(state_dir / STATUS_FILE, {"gateways": dict(sorted(statuses.items()))})
    return previous


def facts_of(
    gateways: Mapping[str, Any],
    statuses: Mapping[str, Mapping[str, Any]],
    connected: set[str],
    versions: Mapping[str, str],
) -> list[Facts]:
    """Facts for the planner from the registry's raw records, the statuses, the hub and health."""
    out = []
    for gid, record in gateways.items():
        if not isinstance(record, dict) or record.get("state") == REVOKED:
            continue
        status = statuses.get(gid, {})
        try:
            state = um.UpdateState(status["state"]) if "state" in status else None
        except ValueError:
            state = None
        site = record.get("site")  # issue 16 adds it; a missing one is no site
        running = status.get("running") or versions.get(gid)
        out.append(
            Facts(
                id=gid,
                site=site if isinstance(site, str) and site else None,
                connected=gid in connected,
                running=running if isinstance(running, str) else None,
                state=state,
                target=status.get("target") if isinstance(status.get("target"), str) else None,
                rollout=status.get("rollout") if isinstance(status.get("rollout"), str) else None,
                reason=status.get("reason") if isinstance(status.get("reason"), str) else None,
                at=float(status["at"]) if isinstance(status.get("at"), int | float) else None,
            )
        )
    return out


def _registry_raw(state_dir: Path) -> dict[str, Any]:
    data = read_json(state_dir / GATEWAYS_FILE, {})
    gateways = data.get("gateways") if isinstance(data, dict) else None
    return gateways if isinstance(gateways, dict) else {}


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def offer_message(rollout: Rollout, release: Release, base_url: str, install: bool, reboot: bool) -> Message:
    """The update-offer for one gateway."""
    return um.UpdateOffer(
        version=release.version,
        sha256=release.sha256,
        size=release.size,
        url=f"{base_url}/v1/releases/{release.version}/bundle",
        install=install,
        reboot=reboot,
        downgrade=release.downgrade or rollout.downgrade,
        urgent=release.urgent or rollout.urgent,
        rollout=rollout.id,
    ).message()


# --- the task in the running plane -----------------------------------------------------------------


class RolloutService:
    """Plans the current rollout, sends the offers, records each gateway's update-status."""

    def __init__(
        self,
        state_dir: Path,
        hub: Hub,
        state_io: StateIO,
        versions: Callable[[], Mapping[str, str]] = dict,
        notice: Callable[[str, str, str, dict[str, Any]], Awaitable[None]] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.state_dir = state_dir
        self.hub = hub
        self._io = state_io
        self._versions = versions  # gateway -> image_version from health records (gateways without an agent)
        self._notice = notice
        self._clock = clock
        self.store = RolloutStore(state_dir)
        self.statuses: dict[str, dict[str, Any]] = {}
        self.last: Plan | None = None
        self.last_record: dict[str, Any] = {}
        self._sent: dict[str, tuple[ControlChannel, Message]] = {}
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- control messages and tunnels -----------------------------------------------------------

    async def on_status(self, gateway_id: str, message: Message) -> Message:
        """`update-status` from a gateway: check, store, re-plan."""
        try:
            status = um.parse_update_status(message)
        except um.MessageError as exc:
            raise ControlError(exc.code, str(exc)) from None
        previous = await self._io(record_status, self.state_dir, gateway_id, status, time.time())
        self.statuses[gateway_id] = {**status.record(), "received_at": time.time()}
        if status.state in um.FAILED_STATES:
            # A retry (after `rollout resume`) is the same offer again: it must be sent again.
            self._sent.pop(gateway_id, None)
        if previous.get("state") != status.state:
            log.info(
                "gateway %s: update %s (running %s, target %s)%s",
                gateway_id,
                status.state,
                status.running,
                status.target,
                f": {status.reason}" if status.reason else "",
            )
            if status.state in (*um.FAILED_STATES, um.UpdateState.HEALTHY) and self._notice is not None:
                summary = f"update to {status.target}: {status.state}" + (
                    f": {status.reason}" if status.reason else ""
                )
                await self._notice(gateway_id, f"update-{status.state}", summary, status.record())
        self._kick.set()
        return um.update_status_ack()

    def on_connect(self, session: GatewaySession) -> None:
        """A new tunnel: plan once its HELLO is in (the offer then goes out on it)."""

        async def after_hello() -> None:
            if session.mux is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.mux.ready.wait(), 10.0)
            await asyncio.sleep(0)  # the identity's ca-update, woken by the same HELLO, goes first
            self._kick.set()

        task = asyncio.ensure_future(after_hello())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- planning --------------------------------------------------------------------------------

    def _plan_locked(self, connected: set[str], versions: Mapping[str, str], now: dt.datetime) -> Any:
        """One round under the state lock: read, plan, store what changed."""
        with state_lock(self.state_dir):
            rollout, raw = self.store.current()
            statuses = load_statuses(self.state_dir)
            if rollout is None:
                return None, {}, statuses, None, ""
            release = load_releases(self.state_dir).get(rollout.version)
            gateways = _registry_raw(self.state_dir)
            result = plan(rollout, facts_of(gateways, statuses, connected, versions), now)
            if release is None and result.phase is not Phase.DONE:
                halted = replace(
                    result.rollout, halted=f"release {rollout.version} is no longer on the plane"
                )
                result = plan(halted, facts_of(gateways, statuses, connected, versions), now)
            if (
                rollout_to_json(result.rollout) != rollout_to_json(rollout)
                or raw.get("phase") != result.phase
                or raw.get("reason") != result.reason
            ):
                if result.phase != raw.get("phase") or result.reason != raw.get("reason"):
                    log.info(
                        "rollout %s: %s%s",
                        rollout.id,
                        result.phase,
                        f": {result.reason}" if result.reason else "",
                    )
                self.store.save(result.rollout, result.phase, result.reason, _now_iso())
                raw = self.store.current()[1]
            base = read_json(self.state_dir / PLANE_FILE, {})
            url = base.get("url") if isinstance(base, dict) else None
            return result, raw, statuses, release, url if isinstance(url, str) else ""

    async def replan(self) -> Plan | None:
        """Plan now and send the offers that changed."""
        connected = {s.gateway_id for s in self.hub.live()}
        versions = dict(self._versions())
        result: Plan | None
        result, raw, statuses, release, url = await self._io(
            self._plan_locked, connected, versions, self._clock()
        )
        self.statuses, self.last, self.last_record = statuses, result, raw
        if result is None or release is None:
            return result
        if not url:
            log.error("rollout %s: no plane URL in %s: cannot offer", result.rollout.id, PLANE_FILE)
            return result
        for gid, gp in result.gateways.items():
            control = self.hub.control(gid)
            if gp.offer is None or control is None:
                continue
            message = offer_message(result.rollout, release, url, gp.offer.install, gp.offer.reboot)
            sent = self._sent.get(gid)
            if sent is not None and sent[0] is control and sent[1] == message:
                continue
            if control.send(message):
                self._sent[gid] = (control, message)
                log.info(
                    "gateway %s: offered %s (install %s, reboot %s)",
                    gid,
                    release.version,
                    gp.offer.install,
                    gp.offer.reboot,
                )
        return result

    async def run(self) -> None:
        """Re-plan every PLAN_INTERVAL seconds, and at once when kicked."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), PLAN_INTERVAL)
            self._kick.clear()
            try:
                await self.replan()
            except PlaneError as exc:
                log.error("rollout: %s", exc)
            except Exception:
                log.exception("rollout: planning failed")  # the next round tries again

    async def close(self) -> None:
        """Stop the helpers started for tunnels."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- what the API shows ----------------------------------------------------------------------

    def gateway_update(self, gateway_id: str) -> dict[str, Any] | None:
        """The "update" field of a gateway in the API: its last status and its step in the rollout."""
        status = self.statuses.get(gateway_id)
        gp = self.last.gateways.get(gateway_id) if self.last is not None else None
        if status is None and gp is None:
            return None
        out: dict[str, Any] = dict(status or {})
        if gp is not None and self.last is not None:
            out["rollout_step"] = gp.step.value
            out.setdefault("target", self.last.rollout.version)
        return out

    def view(self) -> dict[str, Any]:
        """GET /v1/rollout: the current rollout and every gateway in it."""
        result = self.last
        if result is None:
            return {"rollout": None, "gateways": {}}
        gateways = {
            gid: {
                "step": gp.step.value,
                "canary": gp.canary,
                "in_window": gp.in_window,
                "reason": gp.reason,
                "offer": None
                if gp.offer is None
                else {"install": gp.offer.install, "reboot": gp.offer.reboot},
                "update": self.statuses.get(gid),
            }
            for gid, gp in result.gateways.items()
        }
        return {"rollout": self.last_record, "counts": result.counts(), "gateways": gateways}


ROLLOUT_KEY = web.AppKey("plane_rollout", RolloutService)


def setup_rollout(app: web.Application, service: RolloutService) -> None:
    """Wire rollouts into the app (after setup_identity, so ca-update precedes the offer)."""
    hub = app[HUB_KEY]
    app[ROLLOUT_KEY] = service
    hub.register_control(um.UPDATE_STATUS, service.on_status)
    hub.on_connect(service.on_connect)

    async def get_rollout(request: web.Request) -> web.Response:
        # The admin token is checked by mgmtplane.app's middleware, as for every admin route.
        return web.json_response(service.view())

    app.router.add_get("/v1/rollout", get_rollout)

    async def running(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(service.run(), name="rollout")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await service.close()

    app.cleanup_ctx.append(running)
