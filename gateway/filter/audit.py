"""Local audit log of every filter decision: target, rule and counts, never the removed values.

Every decision passes here, so the health record's filter counts are kept here too (COUNTS):
allowed, denied and fields removed, per target kind, never a path or a value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.filter.metadata_filter import Allowed, Denied, FilterRequest
from gateway.filter.policy import Rule

log = logging.getLogger(__name__)


def _shown_path(req: FilterRequest) -> str:
    # Only the path: query values can carry names the plane chose, but there is no need to keep them.
    path = req.path.split("?", 1)[0]
    return path if len(path) <= 200 else path[:200] + "..."


@dataclass
class DecisionCounts:
    """Decisions since the daemon started, per target kind: [allowed, denied, fields removed]."""

    by_kind: dict[str, list[int]] = field(default_factory=dict)

    def count(self, kind: str, decision: Allowed | Denied | Rule) -> None:
        """Count one decision: a denial, a filtered response, or a passthrough request (streamed
        unfiltered, so allowed at the request); a filtered rule's request waits for its response."""
        if isinstance(decision, Rule) and not decision.passthrough:
            return
        entry = self.by_kind.get(kind)
        if entry is None:
            entry = self.by_kind[kind] = [0, 0, 0]
        if isinstance(decision, Denied):
            entry[1] += 1
        else:
            entry[0] += 1
            if isinstance(decision, Allowed):
                entry[2] += decision.removed

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """(allowed, denied, removed) by kind, a copy."""
        return {kind: (a, d, r) for kind, (a, d, r) in self.by_kind.items()}


# One per process: log_decision is a function the relay calls for every decision, and the daemon
# reads the counts for its health record (gateway/health). Tests make their own DecisionCounts.
COUNTS = DecisionCounts()


# Where decision lines go besides the counts: None logs them (journald on the appliance), as
# before there was an audit file; the daemon sets a writer (gateway.filter.auditfile) when one is
# configured. Module state like COUNTS, for the same reason.
_write: Callable[[str], None] | None = None
_stamp_second = -1
_stamp_prefix = ""


def use_file(write: Callable[[str], None] | None) -> None:
    """Send decision lines to `write` (one newline-terminated line each), or back to logging (None)."""
    global _write
    _write = write


def timestamp(now: float) -> str:
    """ISO-8601 UTC with milliseconds; the formatted second is cached (thousands of lines share it)."""
    global _stamp_second, _stamp_prefix
    second = int(now)
    if second != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    return f"{_stamp_prefix}.{int((now - second) * 1000):03d}Z"


def _one_line(text: str) -> str:
    # A path or reason from the plane could hold a newline and forge a line of its own.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def log_decision(target: str, kind: str, req: FilterRequest, decision: Allowed | Denied | Rule) -> None:
    """Record one decision and count it: a line in the audit file when there is one (denials also
    to the journal at WARNING), else logging at INFO, denials at WARNING, request checks at DEBUG."""
    COUNTS.count(kind, decision)
    write = _write
    if write is None:
        _log_decision(target, kind, req, decision)
        return
    if isinstance(decision, Allowed):
        text = (
            f"filter allowed target={target} kind={kind} method={req.method[:16]} path={_shown_path(req)} "
            f"rule={decision.rule} status={decision.status} kept={decision.kept} removed={decision.removed}"
        )
    elif isinstance(decision, Denied):
        text = (
            f"filter denied target={target} kind={kind} method={req.method[:16]} path={_shown_path(req)} "
            f"rule={decision.rule or '-'} reason={decision.reason}"
        )
        _log_decision(target, kind, req, decision)
    elif decision.passthrough:
        # Streamed unfiltered: the request check is the decision. A filtered rule's check is not a
        # decision yet (its response's line follows), so it stays a DEBUG record only.
        text = (
            f"filter request target={target} kind={kind} method={req.method[:16]} path={_shown_path(req)} "
            f"rule={decision.name} passthrough=True"
        )
    else:
        if log.isEnabledFor(logging.DEBUG):
            _log_decision(target, kind, req, decision)
        return
    write(f"{timestamp(time.time())} {_one_line(text)}\n")


def _log_decision(target: str, kind: str, req: FilterRequest, decision: Allowed | Denied | Rule) -> None:
    method = req.method[:16]
    if isinstance(decision, Denied):
        log.warning(
            "filter denied target=%s kind=%s method=%s path=%s rule=%s reason=%s",
            target,
            kind,
            method,
            _shown_path(req),
            decision.rule or "-",
            decision.reason,
        )
    elif isinstance(decision, Allowed):
        log.info(
            "filter allowed target=%s kind=%s method=%s path=%s rule=%s status=%s kept=%d removed=%d",
            target,
            kind,
            method,
            _shown_path(req),
            decision.rule,
            decision.status,
            decision.kept,
            decision.removed,
        )
    else:
        log.debug(
            "filter request target=%s kind=%s method=%s path=%s rule=%s passthrough=%s",
            target,
            kind,
            method,
            _shown_path(req),
            decision.name,
            decision.passthrough,
        )
