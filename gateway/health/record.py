"""The health record (protocol §13.1, schema in gwcore.health) from the facts collected, and the
status file's view of the same facts. Pure, apart from policy_hash reading the policy files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gwcore import health
from gwcore.status_file import TargetState


def policy_hash(files: Iterable[Path]) -> str:
    """sha256 over the loaded policy files' names and bytes, in load order: the same policy set
    gives the same hash on every appliance, so the plane can tell which set filtered a call."""
    digest = hashlib.sha256()
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        digest.update(path.name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return "sha256:" + digest.hexdigest()


def filter_section(
    counts: Mapping[str, tuple[int, int, int]], policy_set_hash: str, audit_dropped: int | None = None
) -> dict[str, Any]:
    """The record's filter counts: totals, per kind, the policy set's hash, and the audit lines the
    audit file lost (None: decisions go to the journal, there is no file to lose them)."""
    per_kind = {kind: {"allowed": a, "denied": d, "removed": r} for kind, (a, d, r) in sorted(counts.items())}
    return {
        "policy_hash": policy_set_hash,
        "allowed": sum(c[0] for c in counts.values()),
        "denied": sum(c[1] for c in counts.values()),
        "removed": sum(c[2] for c in counts.values()),
        "audit_dropped": audit_dropped,
        "policies": dict(list(per_kind.items())[:100]),
    }


def build(
    *,
    at: float,
    seq: int,
    interval: float,
    appliance: Mapping[str, Any],
    certificate: Mapping[str, Any] | None,
    clock: Mapping[str, Any],
    system: Mapping[str, Any],
    failed_units: Sequence[str] | None,
    tunnel: Mapping[str, Any],
    filter_counts: Mapping[str, Any],
    targets: Sequence[Mapping[str, Any]],
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """The record, a CONTROL message body. With `max_bytes`, targets beyond what fits are
    left out (counted in targets_omitted), so a large inventory never makes an oversize frame."""
    record: dict[str, Any] = {
        "type": health.HEALTH,
        "v": health.VERSION,
        "at": at,
        "seq": seq,
        "interval": interval,
        "appliance": dict(appliance),
        "certificate": dict(certificate) if certificate is not None else None,
        "clock": dict(clock),
        "system": dict(system),
        "failed_units": list(failed_units) if failed_units is not None else None,
        "tunnel": dict(tunnel),
        "filter": dict(filter_counts),
        "targets": [dict(t) for t in targets],
        "targets_omitted": 0,
    }
    if max_bytes is not None:
        _fit(record, max_bytes)
    return record


def encoded_size(record: Mapping[str, Any]) -> int:
    """The record's size on the wire (the CONTROL payload's JSON)."""
    import json

    return len(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode())


def _fit(record: dict[str, Any], max_bytes: int) -> None:
    targets = record["targets"]
    if encoded_size(record) <= max_bytes:
        return
    # Keep the targets that are not up first: they are what the plane needs to hear about.
    targets.sort(key=lambda t: (health.target_usable(t), t.get("name", "")))
    total = len(targets)
    while targets and encoded_size(record) > max_bytes:
        del targets[max(1, len(targets) // 8) * -1 :]
        record["targets_omitted"] = total - len(targets)


def status_fields(record: Mapping[str, Any], acked_at: float | None) -> dict[str, Any]:
    """The status file's health fields (gwcore.status_file.TunnelReport) from a record."""
    system = record.get("system") or {}
    clock = record.get("clock") or {}
    cert = record.get("certificate") or {}
    filt = record.get("filter") or {}
    appliance = record.get("appliance") or {}
    states = tuple(
        TargetState(
            name=str(t["name"]),
            state=str(t["state"]),
            error=t.get("error"),
            latency_ms=(t.get("latency_ms") or {}).get("total"),
            cert_changed=bool(t.get("cert_changed")),
        )
        for t in record.get("targets") or ()
    )
    return {
        "image_version": appliance.get("image_version") or "",
        "slot": appliance.get("slot") or "",
        "cert_not_after": cert.get("not_after"),
        "clock_offset": clock.get("plane_offset_s"),
        "ntp_synced": clock.get("ntp_synced"),
        "clock_problem": clock.get("problem"),
        "load1": system.get("load1"),
        "mem_available": system.get("mem_available"),
        "mem_total": system.get("mem_total"),
        "var_percent": system.get("var_percent"),
        "failed_units": tuple(record.get("failed_units") or ()),
        "filter_allowed": filt.get("allowed", 0),
        "filter_denied": filt.get("denied", 0),
        "filter_removed": filt.get("removed", 0),
        "policy_hash": filt.get("policy_hash") or "",
        "target_states": states,
        "health_at": record.get("at"),
        "health_acked_at": acked_at,
    }
