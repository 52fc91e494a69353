"""Local audit log of every filter decision: target, rule and counts, never the removed values."""

from __future__ import annotations

import logging

from gateway.filter.metadata_filter import Allowed, Denied, FilterRequest
from gateway.filter.policy import Rule

log = logging.getLogger(__name__)


def _shown_path(req: FilterRequest) -> str:
    # Only the path: query values can carry names the plane chose, but there is no need to keep them.
    path = req.path.split("?", 1)[0]
    return path if len(path) <= 200 else path[:200] + "..."


def log_decision(target: str, kind: str, req: FilterRequest, decision: Allowed | Denied | Rule) -> None:
    """Log one decision (request check or filtered response) at INFO, denials at WARNING."""
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
