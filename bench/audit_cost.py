"""CPU per filter decision of the audit: the file writer (as shipped) against logging (before it, and
with `audit_log: null`), in one process, so the shared machine's noise hits both alike.

Each round records --per-turn decisions per event-loop turn (the relay's batches at load) for
--seconds; logging goes to a file handler in the format `gateway run` uses off systemd (under
systemd it is JournalHandler: a sendmsg per line on top, and journald's work). Prints the median
µs per decision of process CPU (time.process_time) over the rounds.

    .venv/bin/python bench/audit_cost.py [--rounds 5] [--seconds 1] [--per-turn 32]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.filter import audit
from gateway.filter.auditfile import AuditFile
from gateway.filter.metadata_filter import Allowed, FilterRequest

REQ = FilterRequest("GET", "/v1/gateways/g/targets/nginx/small.json?x=1", {})
ALLOWED = Allowed(status=200, headers={}, body=b"", rule="bench-small", kept=69, removed=0)


async def _run(seconds: float, per_turn: int) -> tuple[float, int]:
    n = 0
    t0 = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(per_turn):
            audit.log_decision("nginx", "http", REQ, ALLOWED)
        n += per_turn
        await asyncio.sleep(0)
    return time.process_time() - t0, n


def measure(mode: str, work: Path, seconds: float, per_turn: int) -> float:
    """µs of CPU per decision, with decisions going to `mode` ("file" or "logging")."""

    async def main() -> float:
        out: AuditFile | None = None
        if mode == "file":
            out = AuditFile(work / "audit.log", asyncio.get_running_loop())
            audit.use_file(out.write)
        try:
            cpu, n = await _run(seconds, per_turn)
        finally:
            audit.use_file(None)
            if out is not None:
                out.close()
        return cpu / n * 1e6

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--per-turn", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        work = Path(tmp)
        handler = logging.FileHandler(work / "gateway.log")
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # gateway.cli's format
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        figures: dict[str, list[float]] = {"logging": [], "file": []}
        for _ in range(args.rounds):  # interleaved: a noisy neighbour hits both
            for mode in figures:
                figures[mode].append(measure(mode, work, args.seconds, args.per_turn))
        lines = (work / "audit.log").read_bytes().count(b"\n")
    print(f"{'audit to':<10}{'us/decision':>12}  (median of {args.rounds}, {args.per_turn} per loop turn)")
    for mode, values in figures.items():
        print(f"{mode:<10}{statistics.median(values):>12.2f}  {' '.join(f'{v:.2f}' for v in values)}")
    print(f"audit.log: {lines} lines")


if __name__ == "__main__":
    main()
