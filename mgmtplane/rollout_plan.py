"""The rollout planner (docs/updates.md, "Rolling out a release"): pure, no I/O, no clock.

Given a rollout (the target version, which gateways, canaries, how many at once, maintenance
windows per site, halt-on-failure, urgent), what the plane knows of each gateway (site, tunnel,
running version, its last `update-status`) and the time, `plan()` says what to offer each
gateway now and where the rollout stands. The plane's task (mgmtplane.rollout) calls it every few
seconds and on each status, stores what it returns and sends the offers.

Rules (decided here, written down in docs/updates.md):
- A gateway is *admitted* when it may install: connected, inside its window (or urgent), a slot
  free (at most `max_parallel` admitted gateways are between admission and healthy), not halted,
  and, while canaries are unfinished, only a canary. Admission sticks (a rebooting gateway is
  offline and still occupies its slot) until it runs the target or fails.
- Admitted gateways get install = reboot = inside their window (or urgent); everyone else in
  scope gets a download-only offer, but only once the canaries are done: a bad release should not
  be fetched by the whole fleet.
- A gateway that already runs the target but reports another target (a superseded rollout's
  download) is offered its running version: "stay" (docs/protocol.md §13.5).
- Halting stops admitting, and admitted gateways that have not begun to install get a
  download-only offer; one already installing, installed or rebooting is let finish (RAUC has
  already made the new slot the next boot's).
- A failure (`failed`/`rolled-back` reported for this rollout's target) halts the rollout when
  `halt_on_failure`; a failed canary always halts it. Without halt-on-failure the gateway is skipped.
  `resume` excuses the failures seen so far (by their report time): those gateways may try again.
- Windows are local wall-clock time in the site's zone; `weekdays` name the day a window starts,
  so "Fri 22:00-04:00" runs into Saturday morning. A window whose start equals its end lasts a day.
  On DST change days the wall clock decides: a window inside the skipped hour does not open that
  day, and one covering the repeated hour lasts an hour longer.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gwcore.update import BUSY_STATES, FAILED_STATES, UpdateState
from mgmtplane.errors import PlaneError

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DEFAULT_WINDOW = "*"  # the window key for gateways whose site has none (or that have no site)
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}|\*")


# --- maintenance windows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A weekly maintenance window in local time: it opens at `start` on each of `weekdays`."""

    tz: str  # zoneinfo name, e.g. Europe/Berlin
    weekdays: frozenset[int]  # 0 = Monday; the day the window opens
    start: dt.time
    end: dt.time  # at or before start: the window runs past midnight into the next day

    def contains(self, now: dt.datetime) -> bool:
        """Whether the UTC instant `now` falls inside the window (in the zone's wall-clock time)."""
        local = now.astimezone(ZoneInfo(self.tz))
        day, clock = local.weekday(), local.time().replace(tzinfo=None)
        if self.start < self.end:
            return day in self.weekdays and self.start <= clock < self.end
        # Across midnight (or a whole day when start == end): the evening part belongs to today's
        # window, the morning part to yesterday's.
        return (day in self.weekdays and clock >= self.start) or (
            (day - 1) % 7 in self.weekdays and clock < self.end
        )

    def text(self) -> str:
        """The window as `TZ,DAYS,HH:MM-HH:MM` (how the CLI takes it)."""
        days = ",".join(WEEKDAYS[d] for d in sorted(self.weekdays))
        return f"{self.tz},{days},{self.start:%H:%M}-{self.end:%H:%M}"

    def to_json(self) -> dict[str, object]:
        """The window as stored in rollouts.json."""
        return {
            "tz": self.tz,
            "weekdays": sorted(self.weekdays),
            "start": f"{self.start:%H:%M}",
            "end": f"{self.end:%H:%M}",
        }


def _days(text: str, what: str) -> frozenset[int]:
    if text in ("*", "daily"):
        return frozenset(range(7))
    names = {n.lower(): i for i, n in enumerate(WEEKDAYS)}
    days: set[int] = set()
    for part in text.split("+"):
        first, _, last = part.partition("-")
        if first.lower() not in names or (last and last.lower() not in names):
            raise PlaneError(f"{what}: {part!r}: weekdays are Mon..Sun, a range Mon-Fri, or * for every day")
        a, b = names[first.lower()], names[(last or first).lower()]
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # Fri-Mon wraps over the weekend
    return frozenset(days)


def _clock(text: str, what: str) -> dt.time:
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise PlaneError(f"{what}: {text!r} is not a time of day HH:MM")
    return dt.time(int(match.group(1)), int(match.group(2)))


def parse_window(text: str) -> tuple[str, Window]:
    """(site, Window) from `SITE=TZ,DAYS,HH:MM-HH:MM` (DAYS: Mon-Fri, Sat+Sun, *); SITE * = default."""
    what = f"--window {text!r}"
    site, sep, rest = text.partition("=")
    if not sep or not _SITE.fullmatch(site):
        raise PlaneError(
            f"{what}: expected SITE=TZ,DAYS,HH:MM-HH:MM (e.g. lab=Europe/Berlin,Mon-Fri,22:00-04:00)"
        )
    parts = rest.split(",")
    if len(parts) < 3:
        raise PlaneError(f"{what}: expected SITE=TZ,DAYS,HH:MM-HH:MM")
    tz, hours = parts[0], parts[-1]
    days = _days("+".join(parts[1:-1]), what)
    start_text, dash, end_text = hours.partition("-")
    if not dash:
        raise PlaneError(f"{what}: {hours!r}: expected HH:MM-HH:MM")
    return site, window(tz, days, _clock(start_text, what), _clock(end_text, what), what)


def window(tz: str, days: frozenset[int], start: dt.time, end: dt.time, what: str) -> Window:
    """A checked Window (the zone must exist)."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise PlaneError(
            f"{what}: unknown time zone {tz!r} (use a zoneinfo name like Europe/Berlin)"
        ) from None
    if not days or not days <= set(range(7)):
        raise PlaneError(f"{what}: no weekdays")
    return Window(tz, days, start, end)


# --- the rollout and the facts ---------------------------------------------------------------------


class Phase(StrEnum):
    """Where a rollout stands."""

    CANARY = "canary"  # canaries first: nobody else starts
    RUNNING = "running"
    HALTED = "halted"
    DONE = "done"


class Step(StrEnum):
    """Where one gateway stands in the rollout (shown by `mgmtplane rollout status`)."""

    DONE = "done"  # runs the target
    ADMITTED = "admitted"  # may install: downloading, installing or rebooting
    FAILED = "failed"
    WAIT_CANARIES = "waiting-canaries"
    WAIT_WINDOW = "waiting-window"
    WAIT_SLOT = "waiting-slot"
    OFFLINE = "offline"
    HALTED = "halted"


@dataclass(frozen=True)
class Rollout:
    """One rollout: what the operator asked for, and what the plane decided so far."""

    id: str
    version: str
    scope: str  # "all", "site", "gateways"
    site: str | None = None  # with scope "site"
    gateways: tuple[str, ...] = ()  # with scope "gateways"
    canaries: tuple[str, ...] = ()
    max_parallel: int = 1
    windows: Mapping[str, Window] = field(default_factory=dict)  # by site name; "*" is the default
    halt_on_failure: bool = True
    urgent: bool = False
    downgrade: bool = False
    # Decided along the way (the planner returns them changed; mgmtplane.rollout stores them):
    admitted: tuple[str, ...] = ()
    halted: str | None = None  # why (a failure, or the operator)
    excused: Mapping[str, float] = field(default_factory=dict)  # gateway -> `at` of a failure resumed past


@dataclass(frozen=True)
class Facts:
    """What the plane knows of one gateway now."""

    id: str
    site: str | None
    connected: bool
    running: str | None  # the version its last status (or health record) reported
    state: UpdateState | None = None  # of its last update-status
    target: str | None = None
    rollout: str | None = None
    reason: str | None = None
    at: float | None = None  # its last update-status's time (the gateway's clock)


@dataclass(frozen=True)
class Offer:
    """What to tell a gateway now (mgmtplane.rollout adds version, sha256, size, url)."""

    install: bool
    reboot: bool


@dataclass(frozen=True)
class GatewayPlan:
    """One gateway's place in the rollout."""

    step: Step
    offer: Offer | None  # None: nothing to offer (done, failed, or waiting for canaries)
    canary: bool
    in_window: bool
    reason: str | None = None


@dataclass(frozen=True)
class Plan:
    """The outcome of one planning round."""

    rollout: Rollout  # with admitted / halted changed
    phase: Phase
    reason: str | None  # why halted
    gateways: Mapping[str, GatewayPlan]

    def counts(self) -> dict[str, int]:
        """How many gateways are at each step."""
        out: dict[str, int] = {}
        for g in self.gateways.values():
            out[g.step.value] = out.get(g.step.value, 0) + 1
        return out


def in_scope(rollout: Rollout, facts: Facts) -> bool:
    """Whether the rollout covers this gateway (canaries always are)."""
    if facts.id in rollout.canaries:
        return True
    if rollout.scope == "site":
        return facts.site is not None and facts.site == rollout.site
    if rollout.scope == "gateways":
        return facts.id in rollout.gateways
    return True


def window_for(rollout: Rollout, site: str | None) -> Window | None:
    """The gateway's window: its site's, else the default `*`; None means any time."""
    if site is not None and site in rollout.windows:
        return rollout.windows[site]
    return rollout.windows.get(DEFAULT_WINDOW)


def _failure(rollout: Rollout, f: Facts) -> str | None:
    """The failure of this rollout's attempt on the gateway, unless the operator resumed past it."""
    if f.state not in FAILED_STATES or f.target != rollout.version or f.running == rollout.version:
        return None
    if f.rollout != rollout.id:
        # Only an attempt this rollout asked for counts against it: a failure that names no
        # rollout (an install by hand) or another one must not halt it.
        return None
    excused = rollout.excused.get(f.id)
    if excused is not None and f.at is not None and f.at <= excused:
        return None
    return f"{f.state}: {f.reason or 'no reason given'}"


def plan(rollout: Rollout, fleet: Sequence[Facts], now: dt.datetime) -> Plan:
    """What to offer each gateway in the rollout's scope now, and the rollout's phase."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    scope = [f for f in fleet if in_scope(rollout, f)]
    order = {gid: i for i, gid in enumerate(rollout.canaries)}
    # Canaries first, in the operator's order; then the rest by site and id, so a site goes together.
    scope.sort(key=lambda f: (order.get(f.id, len(order)), f.site or "", f.id))
    done = {f.id for f in scope if f.running == rollout.version}
    failures = {f.id: why for f in scope if (why := _failure(rollout, f)) is not None}
    canaries = [f.id for f in scope if f.id in order]
    canaries_done = all(c in done for c in canaries)

    halted = rollout.halted
    if halted is None:
        failed_canary = next((c for c in canaries if c in failures), None)
        if failed_canary is not None:
            halted = f"canary {failed_canary} {failures[failed_canary]}"
        elif rollout.halt_on_failure and failures:
            first = next(iter(failures))
            halted = f"gateway {first} {failures[first]}"

    ids = {f.id for f in scope}
    admitted = [g for g in rollout.admitted if g not in done and g not in failures]
    busy = {g for g in admitted if g in ids}
    out: dict[str, GatewayPlan] = {}
    for f in scope:
        is_canary = f.id in order
        win = window_for(rollout, f.site)
        open_now = rollout.urgent or win is None or win.contains(now)
        if f.id in done:
            # It runs the target but works towards another version (a superseded rollout's
            # download): an offer of the running version tells it to stay and drop that.
            stay = Offer(install=False, reboot=False) if f.target not in (None, rollout.version) else None
            out[f.id] = GatewayPlan(Step.DONE, stay, is_canary, open_now)
            continue
        if f.id in failures:
            out[f.id] = GatewayPlan(Step.FAILED, None, is_canary, open_now, failures[f.id])
            continue
        if f.id not in busy:
            step = None
            if halted is not None:
                step = Step.HALTED
            elif not canaries_done and not is_canary:
                out[f.id] = GatewayPlan(Step.WAIT_CANARIES, None, is_canary, open_now)
                continue
            elif not f.connected:
                step = Step.OFFLINE
            elif not open_now:
                step = Step.WAIT_WINDOW
            elif len(busy) >= rollout.max_parallel:
                step = Step.WAIT_SLOT
            if step is not None:
                out[f.id] = GatewayPlan(step, Offer(install=False, reboot=False), is_canary, open_now)
                continue
            busy.add(f.id)
            admitted.append(f.id)
        elif halted is not None and not (f.state in BUSY_STATES and f.target == rollout.version):
            # Halted before it began to install: it stops here (and goes on after a resume).
            out[f.id] = GatewayPlan(Step.HALTED, Offer(install=False, reboot=False), is_canary, open_now)
            continue
        # Admitted: install and reboot inside the window; outside it, keep (or finish) the download.
        offer = Offer(install=open_now, reboot=open_now)
        out[f.id] = GatewayPlan(Step.ADMITTED, offer, is_canary, open_now)

    if halted is not None:
        phase = Phase.HALTED
    elif all(g.step in (Step.DONE, Step.FAILED) for g in out.values()):
        phase = Phase.DONE
    elif not canaries_done:
        phase = Phase.CANARY
    else:
        phase = Phase.RUNNING
    changed = replace(rollout, admitted=tuple(dict.fromkeys(admitted)), halted=halted)
    return Plan(changed, phase, halted, out)


def resume(rollout: Rollout, fleet: Sequence[Facts]) -> Rollout:
    """The rollout un-halted; the failures reported so far are excused (those gateways try again)."""
    excused = dict(rollout.excused)
    for f in fleet:
        if f.state in FAILED_STATES and f.at is not None:
            excused[f.id] = max(f.at, excused.get(f.id, f.at))
    return replace(rollout, halted=None, excused=excused)
