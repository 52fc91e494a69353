"""The update messages of the tunnel (docs/protocol.md §13.5), written once for both ends.

The plane's rollout tells a gateway which release to run (`update-offer`, one-way) and the
gateway's update agent reports every step (`update-status`, a request answered with
`update-status-ack`). This module builds and checks their JSON; it is pure. A receiver ignores
fields it does not know and refuses a known field of the wrong type with a one-line reason that
names the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from gwcore.errors import UserError

Message = dict[str, object]

VERSION = 1

# Message types.
UPDATE_OFFER = "update-offer"  # plane -> gateway, one-way
UPDATE_STATUS = "update-status"  # gateway -> plane, request
UPDATE_STATUS_ACK = "update-status-ack"  # its reply

# Error codes of an `update-status` request (besides control's own: unknown-type, busy, internal).
BAD_MESSAGE = "bad-request"
UNSUPPORTED_VERSION = "unsupported-version"

# A release version: what IMAGE_VERSION and a RAUC manifest's `version` hold (0.1.0, 0.2.0~rc1,
# 1.0+deb12u1). The bound keeps it a file name component (releases/<version>.raucb).
_VERSION_TEXT = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Rollout ids are made by the plane (r-<date>-<hex>), but a gateway only echoes them.
_ROLLOUT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")
MAX_URL = 2048
MAX_REASON = 1024
MAX_SIZE = 1 << 40  # 1 TiB: far beyond any bundle, below every JSON number precision problem


class UpdateState(StrEnum):
    """Where a gateway is on its way to a target version (`update-status.state`)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"  # waiting for the reboot
    REBOOTING = "rebooting"
    HEALTHY = "healthy"  # running == target after a switch, slot marked good
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"


# States in which a gateway occupies one of the rollout's `max_parallel` slots.
BUSY_STATES = frozenset({UpdateState.INSTALLING, UpdateState.INSTALLED, UpdateState.REBOOTING})
# States that end an attempt badly (halt-on-failure looks at these).
FAILED_STATES = frozenset({UpdateState.FAILED, UpdateState.ROLLED_BACK})

SLOTS = frozenset({"A", "B", "unknown"})


class MessageError(UserError):
    """An update message that does not follow §13.5; `code` is the error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def valid_version(value: object) -> bool:
    """True for a release version this protocol carries (also a safe file name component)."""
    return isinstance(value, str) and _VERSION_TEXT.fullmatch(value) is not None and ".." not in value


def valid_rollout_id(value: object) -> bool:
    """True for a rollout id."""
    return isinstance(value, str) and _ROLLOUT_ID.fullmatch(value) is not None


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """`text` as one printable line of at most `limit` characters (for reasons and logs)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat[:limit]


def _version(message: Message) -> None:
    v = message.get("v", VERSION)  # senders always include it; a missing one reads as 1, as in §13.1
    if isinstance(v, bool) or not isinstance(v, int):
        raise MessageError(BAD_MESSAGE, f"{message.get('type')}: v must be an integer")
    if v != VERSION:
        raise MessageError(UNSUPPORTED_VERSION, f"{message.get('type')}: version {v} (this side speaks 1)")


def _bad(message: Message, key: str, problem: str) -> MessageError:
    return MessageError(BAD_MESSAGE, f"{message.get('type')}: {key} {problem}")


def _bool(message: Message, key: str) -> bool:
    value = message.get(key, False)
    if not isinstance(value, bool):
        raise _bad(message, key, "must be true or false")
    return value


def _release(message: Message, key: str, *, optional: bool = False) -> str | None:
    value = message.get(key)
    if value is None and optional:
        return None
    if not valid_version(value):
        raise _bad(message, key, "must be a release version (letters, digits, . + ~ _ -; at most 64)")
    return str(value)


def _rollout(message: Message, *, optional: bool) -> str | None:
    value = message.get("rollout")
    if value is None and optional:
        return None
    if not valid_rollout_id(value):
        raise _bad(message, "rollout", "must be a rollout id")
    return str(value)


# --- update-offer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateOffer:
    """The release the plane wants a gateway to run, and what to do about it now."""

    version: str
    sha256: str  # of the bundle, lower-case hex
    size: int  # of the bundle, bytes
    url: str  # https://<plane>/v1/releases/<version>/bundle (mTLS with the gateway's certificate)
    install: bool  # False: download only (pre-stage outside the window)
    reboot: bool  # after installing, reboot now (inside the window, or urgent)
    downgrade: bool  # the release is marked a downgrade (install with --allow-downgrade)
    urgent: bool  # informative
    rollout: str

    def message(self) -> Message:
        """The one-way CONTROL message."""
        return {
            "type": UPDATE_OFFER,
            "v": VERSION,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "url": self.url,
            "install": self.install,
            "reboot": self.reboot,
            "downgrade": self.downgrade,
            "urgent": self.urgent,
            "rollout": self.rollout,
        }


def parse_update_offer(message: Message) -> UpdateOffer:
    """A checked `update-offer`; MessageError otherwise (the gateway then ignores it and logs why)."""
    _version(message)
    sha = message.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _bad(message, "sha256", "must be 64 lower-case hex digits")
    size = message.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_SIZE:
        raise _bad(message, "size", f"must be an integer from 1 to {MAX_SIZE}")
    url = message.get("url")
    if not isinstance(url, str) or not url.startswith("https://") or len(url) > MAX_URL:
        raise _bad(message, "url", f"must be an https:// URL of at most {MAX_URL} characters")
    if not url.isprintable() or " " in url:
        raise _bad(message, "url", f"must be an https:// URL of at most {MAX_URL} characters")
    version = _release(message, "version")
    assert version is not None
    rollout = _rollout(message, optional=False)
    assert rollout is not None
    return UpdateOffer(
        version=version,
        sha256=sha,
        size=size,
        url=url,
        install=_bool(message, "install"),
        reboot=_bool(message, "reboot"),
        downgrade=_bool(message, "downgrade"),
        urgent=_bool(message, "urgent"),
        rollout=rollout,
    )


# --- update-status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateStatus:
    """A gateway's report of where it is (sent on each step change and on every new tunnel)."""

    running: str  # the version running now (IMAGE_VERSION)
    slot: str  # A, B or unknown
    target: str | None  # the version it is working towards
    rollout: str | None
    state: UpdateState
    progress: float | None  # 0..1 while downloading
    reason: str | None  # one line, for failed / rolled-back
    at: float  # the gateway's clock

    def message(self) -> Message:
        """The request (the channel adds the id)."""
        return {
            "type": UPDATE_STATUS,
            "v": VERSION,
            "running": self.running,
            "slot": self.slot,
            "target": self.target,
            "rollout": self.rollout,
            "state": str(self.state),
            "progress": self.progress,
            "reason": self.reason,
            "at": self.at,
        }

    def record(self) -> dict[str, object]:
        """The JSON the plane stores and shows (the message without type, v and id)."""
        return {k: v for k, v in self.message().items() if k not in ("type", "v")}


def _number(message: Message, key: str) -> float | None:
    value = message.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(message, key, "must be a number")
    return float(value)


def parse_update_status(message: Message) -> UpdateStatus:
    """A checked `update-status`; MessageError (bad-request, unsupported-version) otherwise."""
    _version(message)
    running = _release(message, "running")
    assert running is not None
    slot = message.get("slot")
    if not isinstance(slot, str) or slot not in SLOTS:
        raise _bad(message, "slot", "must be A, B or unknown")
    state = message.get("state")
    if not isinstance(state, str) or state not in {s.value for s in UpdateState}:
        raise _bad(message, "state", "must be one of " + ", ".join(s.value for s in UpdateState))
    progress = _number(message, "progress")
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise _bad(message, "progress", "must be between 0 and 1")
    at = _number(message, "at")
    if at is None:
        raise _bad(message, "at", "must be a number")
    reason = message.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _bad(message, "reason", "must be a string or null")
    return UpdateStatus(
        running=running,
        slot=slot,
        target=_release(message, "target", optional=True),
        rollout=_rollout(message, optional=True),
        state=UpdateState(state),
        progress=progress,
        reason=one_line(reason) if reason else None,
        at=at,
    )


def update_status_ack() -> Message:
    """The plane's reply to `update-status` (the channel adds `re`)."""
    return {"type": UPDATE_STATUS_ACK, "v": VERSION}
