"""The update agent's pure parts: what the updater's record means for the plane, the appliance's own
version and slot, and the few decisions the agent takes about an offer. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gwcore.update import UpdateOffer, UpdateState, one_line, valid_version

PART = ".part"
BUNDLE = ".raucb"


def bundle_name(version: str) -> str:
    """The bundle's file name in the updates directory (the version is a safe file name component)."""
    assert valid_version(version)
    return version + BUNDLE


def image_version(os_release: str) -> str:
    """IMAGE_VERSION of an os-release text ("unknown" when absent or not a version)."""
    for line in os_release.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "IMAGE_VERSION":
            value = value.strip().strip("\"'")
            return value if valid_version(value) else "unknown"
    return "unknown"


def booted_slot(cmdline: str) -> str:
    """The slot grub booted (rauc.slot= on the kernel command line): A, B or unknown."""
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if key == "rauc.slot" and sep and value in ("A", "B"):
            return value
    return "unknown"


@dataclass(frozen=True)
class Outcome:
    """What the updater's record says, as an update-status would put it."""

    state: UpdateState
    target: str | None
    reason: str | None = None
    settled: bool = True  # False: a trial boot the health check has not judged yet: ask again


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return one_line(value) if isinstance(value, str) and value else None


def _version(record: Mapping[str, Any]) -> str | None:
    value = record.get("version")
    return value if valid_version(value) else None


def outcome(status: Mapping[str, Any], running: str, booted: str) -> Outcome:
    """The updater's `status` JSON (state.json within it) as an update-status state.

    - an install in progress, or one cut off that this boot's health check has not recorded yet:
      installing;
    - an install waiting for its reboot (pending, another slot): installed;
    - this boot is a new slot's trial (pending, this slot): installed, not settled;
    - the last outcome: installed on the running version = healthy, rolled-back, failed,
      interrupted = failed with "interrupted: reason"; a last outcome about another version than
      the running one that was installed (the slot was switched back by hand) = idle.
    """
    record = status.get("state")
    record = record if isinstance(record, Mapping) else {}
    installing = record.get("installing")
    if isinstance(installing, Mapping):
        return Outcome(UpdateState.INSTALLING, _version(installing))
    pending = record.get("pending")
    if isinstance(pending, Mapping):
        if pending.get("slot") == booted:
            trial = "on trial: marked good once healthy"
            return Outcome(UpdateState.INSTALLED, _version(pending), trial, settled=False)
        return Outcome(UpdateState.INSTALLED, _version(pending))
    last = record.get("last")
    if not isinstance(last, Mapping):
        return Outcome(UpdateState.IDLE, None)
    version, result, reason = _version(last), last.get("result"), _text(last, "reason")
    if result == "installed":
        if version == running:
            return Outcome(UpdateState.HEALTHY, version)
        return Outcome(UpdateState.IDLE, None)
    if result == "rolled-back":
        return Outcome(UpdateState.ROLLED_BACK, version, reason or "rolled back")
    if result == "interrupted":
        return Outcome(UpdateState.FAILED, version, f"interrupted: {reason or 'the install was cut off'}")
    if result == "failed":
        return Outcome(UpdateState.FAILED, version, reason or "the install failed")
    return Outcome(UpdateState.IDLE, None)


def gave_up_on(offer: UpdateOffer, outcome_now: Outcome, rollout_then: str | None) -> bool:
    """True when this offer is the one whose release already rolled back here: the same version,
    the same rollout. Installing it again would only roll back again (and cost two reboots); a new
    rollout of the same version (the operator's decision) is tried again."""
    return (
        outcome_now.state is UpdateState.ROLLED_BACK
        and outcome_now.target == offer.version
        and rollout_then == offer.rollout
    )


def content_range_start(header: str | None) -> int | None:
    """The first byte of a 206's `Content-Range: bytes FIRST-LAST/TOTAL` (None if unreadable)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition(" ")
    first, sep, _rest = spec.partition("-")
    if unit != "bytes" or not sep or not first.isdigit():
        return None
    return int(first)


def progress_due(done: int, size: int, last_reported: int) -> bool:
    """Report download progress at every further tenth of the bundle."""
    return size > 0 and (done * 10) // size > (last_reported * 10) // size
