"""One memory budget for every body the gateway buffers, across all streams.

Filtered responses are buffered whole (up to a rule's max_body_bytes, 32-64 MiB) and inspected
request bodies too; gateway.service has MemoryMax=256M. Without a shared bound, a handful of
concurrent large responses is an OOM kill of the whole tunnel. With it, the stream that would go
over is refused (RESET busy, HTTP 503 at the plane) and everything else carries on.

The budget is sized from the unit's own cgroup limit (memory.max, MemoryMax= in the unit), a
quarter of it: the rest is the process itself and the filter's working memory (decoding,
parsing). `buffer_budget_mib` in gateway.yaml overrides it.
"""

from __future__ import annotations

from pathlib import Path

from gateway.errors import GatewayError

MIB = 1024 * 1024
# Without a cgroup limit (a developer's machine, the bench): room for a few large bodies at once.
FALLBACK_BUDGET = 256 * MIB
MIN_BUDGET = 8 * MIB
_SHARE = 4  # the budget is limit / _SHARE


class BudgetExhausted(GatewayError):
    """Buffering this body would take the gateway over its memory budget (RESET busy)."""


class Budget:
    """Bytes reserved for buffered bodies, across all streams; never above `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.refused = 0

    def lease(self) -> Lease:
        """A reservation that grows with one stream's buffers; release() returns all of it."""
        return Lease(self)


class Lease:
    """One stream's share of the budget. Use it as a context manager: it is returned on every path."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.held = 0

    def grow(self, n: int) -> None:
        """Reserve `n` more bytes; BudgetExhausted (and nothing reserved) if the budget is spent."""
        if n <= 0:
            return
        budget = self.budget
        if budget.in_use + n > budget.limit:
            budget.refused += 1
            raise BudgetExhausted(
                f"buffering {_size(n)} more would exceed the gateway's {_size(budget.limit)} body "
                f"budget ({_size(budget.in_use)} in use): try again later"
            )
        budget.in_use += n
        budget.peak = max(budget.peak, budget.in_use)
        self.held += n

    def shrink(self, n: int) -> None:
        """Give back `n` bytes (at most what is held)."""
        n = min(n, self.held)
        self.held -= n
        self.budget.in_use -= n

    def release(self) -> None:
        """Give back everything this lease holds."""
        self.shrink(self.held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} bytes"


def cgroup_memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The tightest memory.max of our cgroup v2 and its ancestors (None: no limit)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    if rel is None:
        return None
    limit: int | None = None
    node = (root / rel.lstrip("/")).resolve()
    root = root.resolve()
    while True:
        try:
            text = (node / "memory.max").read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            limit = int(text) if limit is None else min(limit, int(text))
        if node == root or root not in node.parents:
            return limit
        node = node.parent


def default_budget(memory_limit: int | None) -> int:
    """The budget for a unit with `memory_limit` bytes (None: no limit)."""
    if memory_limit is None:
        return FALLBACK_BUDGET
    return max(MIN_BUDGET, memory_limit // _SHARE)
