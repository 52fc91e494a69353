"""Benchmark: enrolment against a real `mgmtplane serve` subprocess on loopback (figures printed only).

Measures registrations/s and latency at concurrency 1 and 16 (each one is the full client path:
GET /v1/ca, hash check, P-256 key + CSR, pinned-TLS POST, atomic writes), token minting, and the
plane's RSS afterwards. Bounded: COUNT registrations per level, TIME_LIMIT seconds overall.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firstboot.register.client import register_async  # noqa: E402
from gwcore.enrol import encode_token  # noqa: E402
from mgmtplane.ca import load_ca  # noqa: E402
from mgmtplane.tokens import TokenStore  # noqa: E402

COUNT = int(os.environ.get("PLANE_BENCH_COUNT", "100"))
TIME_LIMIT = 120.0


def start_plane(state: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgmtplane", "serve", "--listen", "127.0.0.1:0", "--state-dir", str(state)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            match = re.search(r"listening on (\S+)", proc.stdout.readline())
            if match:
                return proc, match.group(1)
    proc.kill()
    raise SystemExit("plane did not start")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def level(
    state: Path, url: str, work: Path, concurrency: int, deadline: float
) -> tuple[float, list[float]]:
    store, ca_hash = TokenStore(state), load_ca(state).spki_hash
    tokens = []
    for _ in range(COUNT):
        secret, expires = store.create(600)
        tokens.append(encode_token(url, ca_hash, secret, expires))
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, token: str) -> None:
        async with sem:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            await register_async(token, work / f"c{concurrency}-{i}", hostname=f"gw{i}")
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    return len(latencies) / (time.perf_counter() - t0), latencies


def main() -> None:
    deadline = time.monotonic() + TIME_LIMIT
    with tempfile.TemporaryDirectory() as tmp:
        state, work = Path(tmp) / "plane", Path(tmp) / "gw"
        proc, url = start_plane(state)
        try:
            t0 = time.perf_counter()
            store = TokenStore(state)
            for _ in range(200):
                store.create(60)
            mint_ms = (time.perf_counter() - t0) / 200 * 1000
            print(f"token create (in-process, locked + fsynced write): {mint_ms:.2f} ms each")
            for concurrency in (1, 16):
                rate, lat = asyncio.run(level(state, url, work, concurrency, deadline))
                lat_ms = sorted(x * 1000 for x in lat)
                p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
                print(
                    f"register c={concurrency:<2} n={len(lat)}: {rate:6.1f} reg/s  "
                    f"p50 {statistics.median(lat_ms):6.1f} ms  p99 {p99:6.1f} ms"
                )
            print(f"plane peak RSS: {rss_mib(proc.pid):.1f} MiB")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
