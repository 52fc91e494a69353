"""Local audit log of every filter decision: target, rule and counts, never the removed values.

Every decision passes here, so the health record's filter counts are kept here too (COUNTS):
allowed, denied and fields removed, per target kind, never a path or a value.
"""

from __future__ import annotations

import logging
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


def log_decision(target: str, kind: str, req: FilterRequest, decision: Allowed | Denied | Rule) -> None:
    """Log one decision (request check or filtered response) at INFO, denials at WARNING; count it."""
    COUNTS.count(kind, decision)
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
