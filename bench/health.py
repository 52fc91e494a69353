"""The health record's size and what it costs the gateway in CPU (nothing asserted).

A real plane, an enrolled `gateway run` and N loopback targets (half TLS Redfish with a trustme
certificate, half Keystone over HTTP, so each probe does TCP, TLS and the version call). The
gateway's CPU time (utime+stime, /proc) is measured over the same window twice: with a record
every INTERVAL seconds, and with records off (one at connect, then an hour's interval). The
difference is the records' cost; the default 30 s interval costs INTERVAL/30 of it.

    python bench/health.py [--targets 10] [--interval 10] [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trustme

from gateway.health.record import encoded_size
from tests.integration.operate_support import (
    KEYSTONE_V3,
    REDFISH_ROOT,
    JsonServer,
    TargetSpec,
    cpu_seconds,
    operate,
    tls_context,
)


def run(root: Path, n: int, interval: float, seconds: float) -> tuple[float, dict[str, object] | None]:
    """CPU seconds of the gateway over `seconds` (after settling), and its last record."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root.parent / "ca.pem"))
    servers, targets = [], []
    for i in range(n):
        if i % 2 == 0:
            server = JsonServer({"/redfish/v1": REDFISH_ROOT}, tls=tls_context(ca)[0])
            url, kind, tls = (
                f"https://127.0.0.1:{server.port}",
                "redfish",
                {"ca_file": str(root.parent / "ca.pem")},
            )
        else:
            server = JsonServer({"/v3": KEYSTONE_V3})
            url, kind, tls = f"http://127.0.0.1:{server.port}", "openstack-keystone", None
        servers.append(server)
        targets.append(TargetSpec(f"t{i:03d}", url, kind, tls))
    try:
        with operate(root, targets, health_interval=interval) as op:
            record = op.record_after(0, timeout=60)
            time.sleep(3)  # start-up and the first probes are not what is measured
            assert op.gateway is not None
            before = cpu_seconds(op.gateway.pid)
            time.sleep(seconds)
            used = cpu_seconds(op.gateway.pid) - before
            record = op.health().get("record") or record
        return used, record
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="health-bench-") as tmp:
        on, record = run(Path(tmp) / "on", args.targets, args.interval, args.seconds)
        off, _ = run(Path(tmp) / "off", args.targets, 3600.0, args.seconds)
    assert record is not None
    size = encoded_size(record)
    per_min = 60 / args.seconds
    cost = (on - off) * per_min
    per_target = size / max(args.targets, 1)
    print(f"health record: {size} bytes with {args.targets} targets ({per_target:.0f} per target)")
    print(f"  JSON: {json.dumps(record)[:160]}...")
    print(f"gateway CPU, records every {args.interval:g} s: {on * per_min:.3f} s/min")
    print(f"gateway CPU, records off:               {off * per_min:.3f} s/min")
    at_30 = cost * args.interval / 30
    print(f"records' cost: {cost:.3f} s CPU/min at {args.interval:g} s; {at_30:.3f} s/min at 30 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
