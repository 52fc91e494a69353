"""Shared pieces of the identity tests: a real plane with short certificate lifetimes, registered
gateways run as `gateway run` processes under a --root tree (so the status console reads their
status file), a target, and calls relayed through the plane's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import ssl
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration import plane_helpers
from tests.integration.outage_support import read_status, start_gateway
from tests.integration.tunnel_support import write_policies

RENEWED = re.compile(r"identity: renewed in ([0-9.]+) s")


def set_lifetime(state_dir: Path, lifetime: str) -> None:
    """`mgmtplane settings --cert-lifetime`: certificates the plane signs from now on."""
    done = plane_helpers.run(
        "mgmtplane", "settings", "--state-dir", str(state_dir), "--cert-lifetime", lifetime
    )
    assert done.returncode == 0, done.stderr


def mgmtplane(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `mgmtplane` command on the plane's state dir."""
    return plane_helpers.run("mgmtplane", *args, "--state-dir", str(state_dir))


async def amgmtplane(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mgmtplane() off the event loop (calls in flight through it must not stall meanwhile)."""
    return await asyncio.to_thread(mgmtplane, state_dir, *args)


def registry(plane: plane_helpers.Plane) -> dict[str, Any]:
    """gateways.json as the plane keeps it."""
    return dict(json.loads((plane.state_dir / "gateways.json").read_text()))


@dataclass
class Appliance:
    """One registered gateway: its --root tree, identity dir, config and (while running) process."""

    root: Path
    name: str
    target_url: str
    plane_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/gateway"

    @property
    def status_path(self) -> Path:
        return self.root / "run/gateway/status.json"

    @property
    def log(self) -> Path:
        return self.root / "gateway.log"

    @property
    def gateway_id(self) -> str:
        return str(json.loads((self.state_dir / "identity.json").read_text())["gateway_id"])

    def status(self) -> dict[str, Any]:
        return read_status(self.status_path)

    def register(self, token: str) -> None:
        done = plane_helpers.register(token, self.state_dir, "--hostname", self.name)
        assert done.returncode == 0, done.stderr
        self.plane_url = json.loads((self.state_dir / "identity.json").read_text())["plane_url"]

    def config(self) -> Path:
        conf = self.root / "etc/gateway/gateway.yaml"
        conf.parent.mkdir(parents=True, exist_ok=True)
        targets = conf.parent / "targets.yaml"
        targets.write_text(
            f"targets:\n  - name: t1\n    url: {self.target_url}\n    kind: http\n"
            "    allow_private: [127.0.0.1]\n"
        )
        conf.write_text(
            f"plane_url: {self.plane_url}\nstate_dir: {self.state_dir}\ntargets: {targets}\n"
            f"policy_dirs: [{write_policies(self.root)}]\nheartbeat_interval: 1\n"
            f"backoff_base: 0.05\nbackoff_cap: 0.5\ndrain_timeout: 5\n"
            f"status_file: {self.status_path}\nstatus_interval: 1\n"
        )
        return conf

    def start(self) -> None:
        self.runs += 1
        with self.log.open("a") as sink:
            sink.write(f"--- run {self.runs}\n")
        self.proc = start_gateway(self.config(), self.log)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.status()
            if report and predicate(report):
                return report
            if self.proc is not None and self.proc.poll() is not None and not predicate(self.status()):
                break
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"{self.name}: status never matched; last {self.status()}\n{self.log.read_text()[-3000:]}"
        )

    def renewal_times(self) -> list[float]:
        return [float(m) for m in RENEWED.findall(self.log.read_text())]


def console(root: Path) -> str:
    """`firstboot --root ROOT status --once`, as tty1 shows it."""
    done = plane_helpers.run("firstboot", "--root", str(root), "status", "--once")
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Caller:
    """Calls through the plane's relay API, as the SaaS makes them, with a record of each."""

    plane: plane_helpers.Plane
    http: aiohttp.ClientSession
    ssl: ssl.SSLContext
    admin: str
    results: list[tuple[float, float, int, str]] = field(default_factory=list)  # start, end, status, why

    async def call(self, gateway_id: str, path: str) -> tuple[int, bytes]:
        url = f"{self.plane.url}/v1/gateways/{gateway_id}/targets/t1{path}"
        start = time.time()
        try:
            async with self.http.get(
                url, ssl=self.ssl, headers={"Authorization": f"Bearer {self.admin}"}
            ) as r:
                body = await r.read()
                status = r.status
        except aiohttp.ClientError as exc:
            status, body = 0, repr(exc).encode()
        self.results.append((start, time.time(), status, body[:200].decode(errors="replace")))
        return status, body

    async def until_up(self, gateway_id: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = await self.call(gateway_id, "/small")
            if status == 200:
                self.results.clear()
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no relayed call got through to {gateway_id}")

    async def keep_busy(self, gateway_id: str, stop: asyncio.Event, workers: int = 4) -> None:
        """`workers` callers, each with one slow call in flight at a time, until `stop`."""

        async def worker(n: int) -> None:
            while not stop.is_set():
                await self.call(gateway_id, f"/slow?s=0.{3 + n}")

        await asyncio.gather(*(worker(n) for n in range(workers)))

    def failures(self) -> list[tuple[float, float, int, str]]:
        return [r for r in self.results if r[2] != 200]


@contextlib.asynccontextmanager
async def caller(plane: plane_helpers.Plane) -> AsyncIterator[Caller]:
    ctx = ssl.create_default_context(cafile=str(plane.state_dir / "ca.pem"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        yield Caller(plane, http, ctx, plane.admin_token())


def tunnels_up(plane: plane_helpers.Plane, gateway_id: str) -> list[float]:
    """When the plane accepted each tunnel of this gateway (its log's "tunnel up" lines, Unix time)."""
    pattern = re.compile(rf"^(\S+ \S+) \w+ mgmtplane\.hub: gateway {gateway_id}: tunnel up", re.MULTILINE)
    return [
        dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for stamp in pattern.findall(plane.log_path.read_text())
    ]


def summary(values: list[float]) -> str:
    """min / median / max of some figures, for printing."""
    if not values:
        return "none"
    return f"min {min(values):.3f} s, median {statistics.median(values):.3f} s, max {max(values):.3f} s"


def reenrol_from_console(root: Path, token: str) -> str:
    """The status console's menu in line mode (as on the serial console): Re-register with `token`;
    returns what it said ("Registered as gateway ...")."""
    import sys

    import pexpect

    from tests.integration.wizard_helpers import env

    child = pexpect.spawn(
        sys.executable,
        ["-m", "firstboot", "--root", str(root), "status"],
        env=env(TERM="dumb"),
        encoding="utf-8",
        timeout=60,
    )
    try:
        child.expect_exact("Choice: ")
        child.sendline("2")
        child.expect_exact("New join token: ")
        child.sendline(token)
        child.expect(r"(Registered as gateway [^\r\n]*|FAILED: [^\r\n]*)")
        said = str(child.match.group(1))
        child.expect_exact("Choice: ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return said
