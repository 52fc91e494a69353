"""Acceptance scenario of issue #11: the plane stopped for 5 minutes behind a load balancer that
closes every connection, then restarted; the tunnel must come back without restarting the gateway.

Prints how long the tunnel took to come back after the plane did, how many attempts the gateway
made, and how the balancer refused them. Nothing is asserted beyond the gateway surviving.

    .venv/bin/python bench/plane_outage.py [--closing-seconds 300] [--refused-seconds 0]
        [--backoff-base 0.5] [--backoff-cap 30]

The defaults are the gateway's own (gateway.yaml's backoff_base and backoff_cap), so the figures
are what an appliance in the field does. A shorter run of the same scenario is in `make check`
(tests/integration/test_tunnel_outage.py). Everything runs on 127.0.0.1, and every process is
started and stopped by this script: `mgmtplane serve`, `firstboot register`, `gateway run`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.outage_support import run_outage  # noqa: E402 - after the path set-up


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--closing-seconds", type=float, default=300.0, help="plane down behind the balancer")
    parser.add_argument("--refused-seconds", type=float, default=0.0, help="before that: nothing listening")
    parser.add_argument("--backoff-base", type=float, default=0.5)
    parser.add_argument("--backoff-cap", type=float, default=30.0)
    args = parser.parse_args()
    start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="plane-outage-") as tmp:
        result = asyncio.run(
            run_outage(
                Path(tmp),
                refused_s=args.refused_seconds,
                closing_s=args.closing_seconds,
                base=args.backoff_base,
                cap=args.backoff_cap,
                heartbeat=10.0,
                say=say,
            )
        )
    refused = ", ".join(f"{mode} {n}" for mode, n in result.front_refused.items())
    survived = result.gateway_alive and len(result.pids) == 1
    lines = [
        "",
        f"outage: {args.refused_seconds:g} s refused, then {args.closing_seconds:g} s behind a closing"
        f" balancer; backoff base {args.backoff_base:g} s, cap {args.backoff_cap:g} s",
        f"tunnel back {result.back_after_s:.1f} s after the plane listened again",
        f"failed attempts during the outage: {result.attempts_before_back} ({result.refused_phase_attempts}"
        f" refused, {result.closing_phase_attempts} closed by the balancer)",
        f"balancer closed {sum(result.front_refused.values())} connections: {refused}",
        f"gateway restarted: {'no' if survived else 'YES'} (pids in the status file: {sorted(result.pids)});"
        f" connects {result.final.get('connects')}, state {result.final.get('state')}",
    ]
    print("\n".join(lines))
    return 0 if result.gateway_alive and result.final.get("state") == "connected" else 1


if __name__ == "__main__":
    sys.exit(main())
