"""Sites, pure: the site name rule, what a gateway knows of a target, and the choice of a gateway
for one relay call (docs/sites.md). No I/O: the route (mgmtplane.site_routes) gathers the facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from gwcore.health import USABLE_STATES
from mgmtplane.errors import PlaneError

# A DNS label, lower case: safe in a URL path, a file name and a log line as it is.
_SITE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
DEFAULT_PRIORITY = 0
# How long the outcome of a relay call stands for the gateway's reachability of that target when
# no fresh health record says otherwise: a failure keeps a gateway off that target for this long.
OUTCOME_TTL_S = 60.0


def valid_site(name: str) -> bool:
    """Whether `name` is a valid site name (a lower-case DNS label)."""
    return bool(_SITE_RE.fullmatch(name))  # not match(): "$" also matches before a final newline


def check_site(name: str, what: str = "site") -> str:
    """`name` if it is a valid site name; else PlaneError naming `what` and the rule."""
    if not valid_site(name):
        raise PlaneError(
            f"{what}: {name!r} is not a valid site name",
            hint="use 1-63 lower-case letters, digits and '-', not starting or ending with '-'",
        )
    return name


def check_priority(value: object, what: str = "priority") -> int:
    """An admin-set priority (an integer in [-1000, 1000]); else PlaneError."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise PlaneError(f"{what}: expected an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, got {value!r}")
    return value


class Reach(IntEnum):
    """What the plane knows of a gateway's route to a target; the higher, the better a choice."""

    NO = 0  # its fresh health record says so, or its last call to the target failed on the way
    UNKNOWN = 1  # no fresh record and no recent call
    YES = 2


# Relay outcomes that say the gateway could not get to the target (as opposed to the target's
# own answer, or the caller's fault): the gateway's route to it is suspect.
UNREACHABLE_CODES = frozenset(
    {"target-unknown", "target-refused", "target-timeout", "tls-verify-failed", "address-forbidden"}
)


def reach(
    probe: str | None, probe_at: float = 0.0, outcome: bool | None = None, outcome_at: float = 0.0
) -> Reach:
    """A gateway's reachability of a target from the newer of two facts: the probe state in its
    fresh health record (received at `probe_at`; None: no fresh record, "": a fresh record that
    does not list the target) and its last relay outcome to it (at `outcome_at`; None: none
    recent). A call that failed after the last record was received outweighs that record."""
    if outcome is not None and (probe is None or outcome_at > probe_at):
        return Reach.YES if outcome else Reach.NO
    if probe is not None:
        return Reach.YES if probe in USABLE_STATES else Reach.NO
    return Reach.UNKNOWN


@dataclass(frozen=True)
class Candidate:
    """One gateway of the site as the plane sees it at the moment of a call."""

    gateway_id: str
    connected: bool
    draining: bool  # it sent GOAWAY (a planned restart): no new calls
    priority: int
    open_streams: int
    reach: Reach

    @property
    def eligible(self) -> bool:
        """Whether it may take a new call at all."""
        return self.connected and not self.draining


def rank(candidates: Iterable[Candidate], exclude: Iterable[str] = ()) -> list[Candidate]:
    """The gateways that may take the call, best first: reachable before unknown before
    unreachable (a last resort: a probe may be wrong, and the call then fails with the gateway's
    own error), then the higher priority, then the fewer open streams, then the id (stable)."""
    skip = set(exclude)
    usable = [c for c in candidates if c.eligible and c.gateway_id not in skip]
    return sorted(usable, key=lambda c: (-c.reach, -c.priority, c.open_streams, c.gateway_id))


def choose(candidates: Iterable[Candidate], exclude: Iterable[str] = ()) -> Candidate | None:
    """The gateway for the call (rank's first), or None when no gateway of the site may take it."""
    ranked = rank(candidates, exclude)
    return ranked[0] if ranked else None


def no_gateway_reason(site: str, candidates: Iterable[Candidate], tried: Iterable[str] = ()) -> str:
    """Why no gateway could take a call, in one line, for the 503's message."""
    cands = list(candidates)
    if not cands:
        return f"site {site} has no registered gateway"
    tried_set = set(tried)
    parts = []
    for c in sorted(cands, key=lambda c: c.gateway_id):
        state = (
            "tried"
            if c.gateway_id in tried_set
            else "offline"
            if not c.connected
            else "draining"
            if c.draining
            else "available"
        )
        parts.append(f"{c.gateway_id[:8]} {state}")
    return f"no gateway of site {site} can take the call ({', '.join(parts)})"
