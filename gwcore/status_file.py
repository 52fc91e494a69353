"""The daemon's status report (/run/gateway/status.json): its schema, once, for writer and readers.

Pure: no I/O. `gateway run` encodes a TunnelReport on every state change and every `interval`
seconds; the status console decodes whatever it finds, tolerant of a missing, partial, older or
newer file, and judges from `updated_at`, `interval` and `pid` whether the report is stale.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from gwcore.paths import STATUS_FILE

SCHEMA = 1
DEFAULT_PATH = STATUS_FILE
DEFAULT_INTERVAL = 15.0
# States after which the daemon has exited on purpose: the report is its last word, not stale.
FINAL_STATES = frozenset({"stopped", "rejected"})
# A report is stale once this many intervals have passed without a write (one missed write is
# a busy loop, not a dead daemon).
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class TargetState:
    """One target as the gateway's own probe last saw it (the health record's, docs/operate.md)."""

    name: str
    state: str  # up, degraded, down, tls-error, forbidden
    error: str | None = None  # why it is not up: refused, timeout, tls-verify-failed, ...
    latency_ms: float | None = None  # the whole probe: connect, TLS, the version call
    cert_changed: bool = False  # its TLS certificate is not the one the probe saw before


@dataclass(frozen=True)
class TunnelReport:
    """One snapshot of the daemon. Times are Unix seconds (UTC)."""

    state: str = "unknown"  # the tunnel State: connecting, connected, draining, backoff, rejected, ...
    since: float | None = None  # when the tunnel last went up, went down, or stopped
    plane_url: str = ""
    connects: int = 0  # successful connections since the daemon started
    attempts: int = 0  # failed attempts since the last successful connection
    next_attempt_at: float | None = None  # while in backoff
    last_error: str | None = None  # why the last attempt or connection failed
    stop_reason: str | None = None  # why the daemon stopped retrying (an explicit rejection)
    action: str | None = None  # what an operator can do about stop_reason (or about last_error)
    streams_open: int = 0
    relayed: int = 0  # streams the plane opened since the daemon started
    targets: int | None = None  # targets in the loaded inventory
    version: str = ""
    pid: int | None = None
    updated_at: float | None = None
    interval: float = DEFAULT_INTERVAL  # seconds between periodic writes
    schema: int = SCHEMA
    # Health facts, the same as the health record's (added in schema 1; older files lack them).
    image_version: str = ""  # IMAGE_VERSION of /etc/os-release
    slot: str = ""  # the booted root slot (A, B) or "unknown"
    cert_not_after: float | None = None  # the gateway's client certificate expires then
    clock_offset: float | None = None  # seconds this appliance's clock is ahead (+) of the plane's
    ntp_synced: bool | None = None  # timesyncd's view (None: not known)
    clock_problem: str | None = None  # a clock skew, explained, before TLS fails over it
    load1: float | None = None
    mem_available: int | None = None  # bytes
    mem_total: int | None = None  # bytes
    var_percent: float | None = None  # /var used, percent
    failed_units: tuple[str, ...] = ()
    filter_allowed: int = 0  # metadata-filter decisions since the daemon started
    filter_denied: int = 0
    filter_removed: int = 0  # fields removed from allowed responses
    policy_hash: str = ""  # sha256 of the loaded policy set
    target_states: tuple[TargetState, ...] = ()
    health_at: float | None = None  # when the last health record was made
    health_acked_at: float | None = None  # when the plane last accepted one (None: never, or an old plane)
    # The gateway's identity (docs/operate.md): added in schema 1, older readers ignore them.
    stop_code: str | None = None  # in `rejected`: the refusal as a code (revoked, expired, ...)
    identity: str | None = None  # valid, renewal-failing, renewal-unavailable, revoked, expired, ...
    renew_at: float | None = None  # when the gateway renews it next
    renewals: int = 0  # certificates renewed since the daemon started
    renew_error: str | None = None  # why the last renewal failed (cleared by a success)


_FIELDS = {f.name: f for f in fields(TunnelReport)}
_DEFAULTS = TunnelReport()


def encode(report: TunnelReport) -> bytes:
    """The report as the file's bytes: one JSON object, keys sorted, newline-terminated."""
    return (json.dumps(asdict(report), sort_keys=True) + "\n").encode()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


_TEXT = frozenset({"state", "plane_url", "version", "image_version", "slot", "policy_hash"})
_OPTIONAL_TEXT = frozenset(
    {"last_error", "stop_reason", "action", "clock_problem", "stop_code", "identity", "renew_error"}
)
_OPTIONAL_NUMBER = frozenset(
    {"since", "next_attempt_at", "updated_at", "cert_not_after", "clock_offset", "load1", "var_percent",
     "health_at", "health_acked_at", "renew_at"}
)  # fmt: skip
_OPTIONAL_COUNT = frozenset({"pid", "targets", "mem_available", "mem_total"})
_MAX_LIST = 1000  # a reader's bound on lists, whatever a file says


def _target_state(value: Any) -> TargetState | None:
    if not isinstance(value, dict):
        return None
    name, state = value.get("name"), value.get("state")
    if not isinstance(name, str) or not name or not isinstance(state, str) or not state:
        return None
    error = value.get("error")
    return TargetState(
        name=name,
        state=state,
        error=error if isinstance(error, str) and error else None,
        latency_ms=_number(value.get("latency_ms")),
        cert_changed=value.get("cert_changed") is True,
    )


def _coerce(name: str, value: Any) -> Any:
    """The value if it has the field's type, else the field's default (a bad field never hides the rest)."""
    default = getattr(_DEFAULTS, name)
    if name in _TEXT:
        return value if isinstance(value, str) and value else default
    if name in _OPTIONAL_TEXT:
        return value if isinstance(value, str) and value else None
    if name in _OPTIONAL_NUMBER:
        return _number(value)
    if name == "interval":
        number = _number(value)
        return number if number is not None and number > 0 else default
    if name == "ntp_synced":
        return value if isinstance(value, bool) else None
    if name == "failed_units":
        items = value[:_MAX_LIST] if isinstance(value, list) else []
        return tuple(v for v in items if isinstance(v, str) and v)
    if name == "target_states":
        items = value[:_MAX_LIST] if isinstance(value, list) else []
        return tuple(t for t in map(_target_state, items) if t is not None)
    if name in _OPTIONAL_COUNT and value is None:
        return None
    # Counters and ids: non-negative integers.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return default
    return value


def decode(data: Any) -> TunnelReport | None:
    """A report from parsed JSON; None when it is not a report at all (not an object, no state).

    Unknown keys (a newer writer) are ignored; missing or mistyped ones (an older or torn
    writer) take their defaults.
    """
    if not isinstance(data, dict) or not isinstance(data.get("state"), str):
        return None
    return TunnelReport(**{name: _coerce(name, data[name]) for name in _FIELDS if name in data})


def staleness(report: TunnelReport, now: float, pid_alive: bool | None = None) -> str | None:
    """Why the report no longer describes a running daemon, or None while it does.

    `pid_alive` is whether the report's pid still runs (None when the reader cannot tell). A
    final state (stopped, rejected) is never stale: it is what the daemon said as it exited.
    """
    if report.state in FINAL_STATES:
        return None
    if pid_alive is False:
        return f"the gateway process {report.pid} is gone"
    if report.updated_at is None:
        return None  # an older writer's report: its age cannot be judged
    age = now - report.updated_at
    if age > STALE_AFTER_INTERVALS * report.interval:
        return f"last report {format_age(age)} ago"
    return None


def format_age(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
