"""`make bench`: every benchmark in turn, each printing its own figures (nothing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Cheap first; the image benchmark builds and boots twice under TCG and takes the longest.
ORDER = [
    "filter.py",
    "relay.py",
    "gateway_cpu.py",
    "plane_register.py",
    "plane_outage.py",
    "vmdk.py",
    "firstboot_wizard.py",
    "health.py",
    "build.py",
]


def main() -> int:
    failed = []
    for name in ORDER:
        script = BENCH / name
        if not script.exists():
            continue
        print(f"\n===== bench/{name} =====", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=BENCH.parent, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
