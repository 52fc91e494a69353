"""When a gateway's health changes enough to tell someone: the event rules, with hysteresis (pure).

Each rule has a condition that is raised and later resolved, and needs the bad (or good) reading
twice in a row, or a margin, before it changes, so a value hovering at a threshold does not flap
(docs/operate.md has the table). Input: the previous GatewayState and a health record (checked
by gwcore.health.parse_record), or the silence since the last one. Output: the new state and the
events to deliver. No I/O, no clock of its own: `now` is passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gwcore import health

# The rules' thresholds (docs/operate.md, "Events").
DOWN_AFTER_INTERVALS = 3  # appliance down: no record for this many intervals ...
DOWN_AFTER_MIN = 90.0  # ... and at least this many seconds
STREAK = 2  # consecutive readings before target-down and clock-skew change state
CERT_WARN_DAYS = 14.0  # certificate-expiry raised below this many days left ...
CERT_CLEAR_DAYS = 21.0  # ... resolved above this many (a renewal)
SKEW_RAISE = 30.0  # seconds between the gateway's clock and the plane's
SKEW_CLEAR = 10.0
DISK_RAISE = 90.0  # /var used, percent
DISK_CLEAR = 85.0
HISTORY = 200  # state changes kept per gateway

RAISED, RESOLVED, NOTICE = "raised", "resolved", "notice"


def new_id() -> str:
    """An event's id: receivers use it to drop a duplicate delivery."""
    return uuid.uuid4().hex


@dataclass
class GatewayState:
    """What the plane remembers of one gateway between records (persisted as JSON)."""

    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {since, summary, ...}
    streaks: dict[str, int] = field(default_factory=dict)  # key -> +n bad readings or -n good ones
    fingerprints: dict[str, str] = field(default_factory=dict)  # target -> last certificate seen
    history: list[dict[str, Any]] = field(default_factory=list)
    last_seen: float | None = None  # when the last record arrived (plane clock)
    interval: float = 30.0

    def to_json(self) -> dict[str, Any]:
        """The state as stored."""
        return {
            "conditions": self.conditions,
            "streaks": self.streaks,
            "fingerprints": self.fingerprints,
            "history": self.history,
            "last_seen": self.last_seen,
            "interval": self.interval,
        }

    @classmethod
    def from_json(cls, data: Any) -> GatewayState:
        """A stored state; whatever is missing or malformed starts afresh (it is rebuilt by records)."""
        if not isinstance(data, dict):
            return cls()

        def dict_of(key: str, kind: type) -> dict[str, Any]:
            value = data.get(key)
            if not isinstance(value, dict):
                return {}
            return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, kind)}

        history = data.get("history")
        last_seen = data.get("last_seen")
        interval = data.get("interval")
        return cls(
            conditions=dict_of("conditions", dict),
            streaks={k: v for k, v in dict_of("streaks", int).items() if not isinstance(v, bool)},
            fingerprints=dict_of("fingerprints", str),
            history=[h for h in history if isinstance(h, dict)][-HISTORY:]
            if isinstance(history, list)
            else [],
            last_seen=float(last_seen)
            if isinstance(last_seen, int | float) and not isinstance(last_seen, bool)
            else None,
            interval=float(interval) if isinstance(interval, int | float) and interval > 0 else 30.0,
        )


@dataclass(frozen=True)
class Event:
    """One thing to tell: a condition raised or resolved, or a one-off notice."""

    id: str
    type: str  # appliance-down, target-down, clock-skew, ... (docs/operate.md, "Events")
    state: str  # raised, resolved, notice
    gateway_id: str
    at: float
    summary: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The webhook body and the history entry."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "gateway_id": self.gateway_id,
            "at": self.at,
            "summary": self.summary,
            "detail": self.detail,
        }


class _Evaluation:
    def __init__(self, gateway_id: str, state: GatewayState, now: float) -> None:
        self.gateway_id = gateway_id
        self.state = state
        self.now = now
        self.events: list[Event] = []

    def emit(self, kind: str, status: str, summary: str, detail: dict[str, Any]) -> None:
        event = Event(new_id(), kind, status, self.gateway_id, self.now, summary, detail)
        self.events.append(event)
        self.state.history.append({k: v for k, v in event.to_json().items() if k != "gateway_id"})
        del self.state.history[:-HISTORY]

    def raise_(self, key: str, kind: str, summary: str, detail: dict[str, Any]) -> None:
        if key in self.state.conditions:
            return
        self.state.conditions[key] = {"type": kind, "since": self.now, "summary": summary, "detail": detail}
        self.emit(kind, RAISED, summary, detail)

    def resolve(self, key: str, summary: str) -> None:
        condition = self.state.conditions.pop(key, None)
        if condition is not None:
            self.emit(str(condition["type"]), RESOLVED, summary, dict(condition.get("detail") or {}))

    def _run(self, key: str, bad: bool, good: bool) -> int:
        """Consecutive bad (positive) or good (negative) readings for `key`, this one included;
        a reading between the two thresholds ends both runs."""
        previous = self.state.streaks.get(key, 0)
        value = (max(previous, 0) + 1) if bad else (min(previous, 0) - 1) if good else 0
        self.state.streaks[key] = value
        return value

    def level(
        self,
        key: str,
        kind: str,
        bad: bool,
        good: bool,
        texts: tuple[str, str],
        detail: dict[str, Any],
        streak: int = 1,
    ) -> None:
        """A condition with two thresholds: `streak` bad readings in a row raise it, as many good
        ones resolve it, and a reading in between changes nothing (the hysteresis)."""
        run = self._run(key, bad, good) if streak > 1 else (1 if bad else -1 if good else 0)
        if run >= streak:
            self.raise_(key, kind, texts[0], detail)
        elif run <= -streak:
            self.resolve(key, texts[1])


def on_record(gateway_id: str, state: GatewayState, record: Mapping[str, Any], now: float) -> list[Event]:
    """Apply one checked health record; returns the events (state is updated in place)."""
    ev = _Evaluation(gateway_id, state, now)
    state.last_seen = now
    interval = record.get("interval")
    if isinstance(interval, float) and interval > 0:
        state.interval = interval
    ev.resolve("appliance-down", "the appliance reports again")

    # Clock: the gateway's clock against ours, measured on arrival (the link's delay is noise here).
    skew = float(record["at"]) - now
    ev.level(
        "clock-skew",
        "clock-skew",
        abs(skew) > SKEW_RAISE,
        abs(skew) < SKEW_CLEAR,
        (
            f"the appliance's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the plane's",
            "the appliance's clock agrees with the plane's again",
        ),
        {"offset_s": round(skew, 3)},
        streak=STREAK,
    )

    cert = record.get("certificate") or {}
    not_after = cert.get("not_after")
    if isinstance(not_after, float):
        days = (not_after - now) / 86400
        ev.level(
            "certificate-expiry:appliance",
            "certificate-expiry",
            days < CERT_WARN_DAYS,
            days > CERT_CLEAR_DAYS,
            (
                f"the appliance's certificate expires in {max(days, 0):.1f} days",
                "the appliance's certificate was renewed",
            ),
            {"subject": "appliance", "not_after": not_after},
        )

    system = record.get("system") or {}
    var = system.get("var_percent")
    if isinstance(var, float):
        ev.level(
            "disk-full",
            "disk-full",
            var >= DISK_RAISE,
            var < DISK_CLEAR,
            (f"/var is {var:.0f}% full", f"/var is down to {var:.0f}%"),
            {"var_percent": var},
        )

    seen: set[str] = set()
    for target in record.get("targets") or ():
        name = target.get("name")
        if not isinstance(name, str):
            continue
        seen.add(name)
        _target(ev, name, target)
    # A target that left the inventory is no longer down.
    for key in [k for k in state.conditions if k.startswith(("target-down:", "certificate-expiry:target:"))]:
        if key.split(":")[-1] not in seen and not record.get("targets_omitted"):
            ev.resolve(key, "the target is no longer in the inventory")
            state.streaks.pop(key, None)
    return ev.events


def _target(ev: _Evaluation, name: str, target: Mapping[str, Any]) -> None:
    usable = health.target_usable(target)
    error = target.get("error")
    ev.level(
        f"target-down:{name}",
        "target-down",
        not usable,
        usable,
        (
            f"target {name} is {target.get('state')}" + (f": {error}" if error else ""),
            f"target {name} answers again",
        ),
        {"target": name, "state": target.get("state"), "error": error},
        streak=STREAK,
    )
    tls = target.get("tls") or {}
    fingerprint = tls.get("fingerprint")
    if isinstance(fingerprint, str):
        previous = ev.state.fingerprints.get(name)
        ev.state.fingerprints[name] = fingerprint
        if previous is not None and previous != fingerprint:
            trusted = tls.get("trusted")
            ev.emit(
                "target-certificate-changed",
                NOTICE,
                f"target {name} presents a new TLS certificate"
                + ("" if trusted is not False else ", which the gateway's trust rule refuses"),
                {"target": name, "previous": previous, "fingerprint": fingerprint, "trusted": trusted},
            )
    not_after = tls.get("not_after")
    if isinstance(not_after, float) and tls.get("trusted") is not False:
        days = (not_after - ev.now) / 86400
        ev.level(
            f"certificate-expiry:target:{name}",
            "certificate-expiry",
            days < CERT_WARN_DAYS,
            days > CERT_CLEAR_DAYS,
            (
                f"target {name}'s TLS certificate expires in {max(days, 0):.1f} days",
                f"target {name}'s TLS certificate was renewed",
            ),
            {"subject": "target", "target": name, "not_after": not_after},
        )


def on_silence(
    gateway_id: str, state: GatewayState, now: float, since: float, minimum: float = DOWN_AFTER_MIN
) -> list[Event]:
    """No record since `since` (the last one, or the plane's start): appliance-down once the
    silence passes max(DOWN_AFTER_INTERVALS x interval, minimum)."""
    grace = down_grace(state, minimum)
    if now - since < grace:
        return []
    ev = _Evaluation(gateway_id, state, now)
    ev.raise_(
        "appliance-down",
        "appliance-down",
        f"no health record from the appliance for {now - since:.0f} s",
        {"last_seen": state.last_seen},
    )
    return ev.events


def down_grace(state: GatewayState, minimum: float = DOWN_AFTER_MIN) -> float:
    """Seconds of silence after which a gateway is down (also its records' staleness)."""
    return max(DOWN_AFTER_INTERVALS * state.interval, minimum)
