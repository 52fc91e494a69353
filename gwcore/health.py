"""The operate lane's contract between the gateway and the plane (docs/protocol.md §13.1-13.3).

The health record (CONTROL message "health", version 1): its fields, once, as a schema table
that the plane checks every record against and the gateway's tests check its records with. The
reply ("health-ack"), the support offer, and the reserved stream target names ("@support").
Pure: no I/O.

Nothing in a record is customer data: versions, counts, states, latencies, certificate dates
and fingerprints, and error codes. A field the schema does not know is dropped by the reader
(a newer gateway's), a field of the wrong type is refused with its path, so one bad gateway
cannot put arbitrary data into the plane's store or its webhooks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

HEALTH = "health"  # gateway -> plane, a request every `interval` seconds
HEALTH_ACK = "health-ack"  # plane -> gateway, the reply: {"time": the plane's clock}
SUPPORT_OFFER = "support-offer"  # gateway -> plane, a request after a run of failed reconnects
SUPPORT_OFFER_ACK = "support-offer-ack"  # plane -> gateway: {"fetch": bool}
VERSION = 1

# Stream target names the plane may open that are not in targets.yaml: they start with "@", which
# no inventory name can (gateway.relay.targets). The gateway answers them itself.
RESERVED_PREFIX = "@"
SUPPORT_TARGET = "@support"
SUPPORT_PATH = "/bundle"

# Target probe states. "up" and "degraded" answer; the rest cannot be relayed to.
TARGET_STATES = ("up", "degraded", "down", "tls-error", "forbidden")
USABLE_STATES = frozenset({"up", "degraded"})


class RecordError(ValueError):
    """A record that does not follow the schema; str() names the field's path and the problem."""


# --- the schema: a table per object; a value is a type tag, a nested table, or a list/map of one ---


class _List:
    def __init__(self, item: Any, limit: int) -> None:
        self.item = item
        self.limit = limit


class _Map:
    """An object with free keys (policy kinds, version field names), each value of one shape."""

    def __init__(self, item: Any, limit: int) -> None:
        self.item = item
        self.limit = limit


NUM, INT, BOOL, STR, TEXT = "number", "integer", "boolean", "string", "text"
_STR_MAX = 256  # names, versions, codes
_TEXT_MAX = 1024  # a last error, a clock problem

_LATENCY = {"tcp": NUM, "tls": NUM, "http": NUM, "total": NUM}
_TLS = {"not_before": NUM, "not_after": NUM, "fingerprint": STR, "trusted": BOOL}
_TARGET = {
    "name": STR,
    "kind": STR,
    "state": STR,
    "error": TEXT,
    "checked_at": NUM,
    "latency_ms": _LATENCY,
    "http_status": INT,
    "tls": _TLS,
    "cert_changed": BOOL,  # since this gateway's previous probe (the plane keeps its own history)
    "version": _Map(STR, 16),
}
_COUNTS = {"allowed": INT, "denied": INT, "removed": INT}
SCHEMA: dict[str, Any] = {
    "v": INT,
    "at": NUM,
    "seq": INT,
    "interval": NUM,
    "appliance": {
        "image_version": STR,
        "slot": STR,
        "package_version": STR,
        "uptime_s": NUM,
        "daemon_uptime_s": NUM,
    },
    "certificate": {"not_before": NUM, "not_after": NUM},
    "clock": {"ntp_synced": BOOL, "ntp_offset_s": NUM, "plane_offset_s": NUM, "problem": TEXT},
    "system": {
        "load1": NUM,
        "cpu_percent": NUM,
        "mem_total": INT,
        "mem_available": INT,
        "var_total": INT,
        "var_used": INT,
        "var_percent": NUM,
        "gateway_rss": INT,
        "gateway_cpu_s": NUM,
    },
    "failed_units": _List(STR, 100),
    "tunnel": {
        "connects": INT,
        "connected_since": NUM,
        "failures": INT,
        "streams_open": INT,
        "relayed": INT,
        "last_error": TEXT,
        "rtt_ms": NUM,
    },
    # audit_dropped: decision lines the audit log file could not take (gateway.filter.auditfile).
    "filter": {"policy_hash": STR, **_COUNTS, "audit_dropped": INT, "policies": _Map(_COUNTS, 100)},
    "targets": _List(_TARGET, 1000),
    "targets_omitted": INT,
}
REQUIRED = ("v", "at")


def _check(value: Any, shape: Any, path: str) -> Any:
    if value is None:
        return None  # every field may be null: not known on this appliance
    if isinstance(shape, dict):
        if not isinstance(value, Mapping):
            raise RecordError(f"{path}: expected an object")
        return {
            key: _check(value[key], sub, f"{path}.{key}" if path else key)
            for key, sub in shape.items()
            if key in value
        }
    if isinstance(shape, _List):
        if not isinstance(value, list):
            raise RecordError(f"{path}: expected a list")
        if len(value) > shape.limit:
            raise RecordError(f"{path}: more than {shape.limit} items")
        return [_check(v, shape.item, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(shape, _Map):
        if not isinstance(value, Mapping):
            raise RecordError(f"{path}: expected an object")
        if len(value) > shape.limit:
            raise RecordError(f"{path}: more than {shape.limit} entries")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= _STR_MAX or not key.isprintable():
                raise RecordError(f"{path}: a key is not a short printable name")
            out[key] = _check(item, shape.item, f"{path}.{key}")
        return out
    return _scalar(value, shape, path)


def _scalar(value: Any, tag: str, path: str) -> Any:
    if tag == BOOL:
        if not isinstance(value, bool):
            raise RecordError(f"{path}: expected true or false")
        return value
    if tag in (STR, TEXT):
        limit = _STR_MAX if tag == STR else _TEXT_MAX
        if not isinstance(value, str) or len(value) > limit or not value.isprintable():
            raise RecordError(f"{path}: expected printable text of at most {limit} characters")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{path}: expected a {tag}")
    if tag == INT:
        if not isinstance(value, int) or not 0 <= value < 2**63:
            raise RecordError(f"{path}: expected a non-negative integer")
        return value
    if not math.isfinite(value):
        raise RecordError(f"{path}: expected a finite number")
    return float(value)


def parse_record(message: Mapping[str, Any]) -> dict[str, Any]:
    """The record's known fields, checked against SCHEMA (RecordError naming the first bad one).

    The message's own keys ("type", "id") are not part of the record."""
    for key in REQUIRED:
        if message.get(key) is None:
            raise RecordError(f"{key}: missing")
    record: dict[str, Any] = _check(message, SCHEMA, "")
    if record["v"] < 1:
        raise RecordError("v: expected 1 or later")
    return record


def target_usable(target: Mapping[str, Any]) -> bool:
    """Whether the gateway's probe found the target answering (a relayed call can reach it)."""
    return target.get("state") in USABLE_STATES
