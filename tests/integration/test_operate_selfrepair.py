"""Self-repair: a wedged event loop stops the watchdog pings (and a supervisor acting as systemd
restarts the daemon); a plane that answers PINGs but no health record gets re-dialled; a plane
without a health handler is left alone and relays as before."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gwcore import health
from gwcore.control import Message
from mgmtplane.hub import PLANE_LIMITS, Hub, setup_hub
from tests.integration.tunnel_support import (
    PYTHON,
    REPO,
    make_pki,
    plane_ssl_context,
    running_target,
    stop_process,
    write_policies,
)

pytestmark = pytest.mark.timeout(120)

# `gateway run`, with SIGUSR1 wired to a blocking call on the event loop's thread: a stand-in for
# any bug that blocks the loop (a synchronous read of a hung NFS file, a runaway regex).
WEDGEABLE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: time.sleep(3600))\n"
    "from gateway.cli import main\n"
    "sys.exit(main(['run', '--config', sys.argv[1]]))\n"
)


def gateway_config(tmp_path: Path, plane: str, pki, targets: str = "", **extra: object) -> Path:  # type: ignore[no-untyped-def]
    (tmp_path / "targets.yaml").write_text(targets or "targets: []\n")
    config = tmp_path / "gateway.yaml"
    lines = [
        f"plane_url: {plane}",
        f"state_dir: {pki.state_dir}",
        f"targets: {tmp_path / 'targets.yaml'}",
        f"policy_dirs: [{write_policies(tmp_path)}]",
        "heartbeat_interval: 1",
        "backoff_base: 0.05",
        "backoff_cap: 0.5",
        f"status_file: {tmp_path / 'status.json'}",
        "status_interval: 0.5",
        f"support_socket: {tmp_path / 'none.sock'}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


class Notify:
    """An sd_notify socket, read as systemd reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


def supervise_once(
    proc: subprocess.Popen[bytes], notify: Notify, watchdog: float, wedge_at: float
) -> tuple[int, int, float]:
    """What systemd does with WatchdogSec=: wait for WATCHDOG=1; when none comes for `watchdog`
    seconds, SIGABRT. SIGUSR1 (the wedge) is sent `wedge_at` seconds after READY=1. Returns
    (pings before the wedge, pings after it, seconds from the wedge to the firing)."""
    start = time.monotonic()
    ready_at: float | None = None
    pings = late = 0
    wedged_at: float | None = None
    last: float | None = None  # systemd arms the watchdog once start-up is complete (READY=1)
    while True:
        now = time.monotonic()
        if ready_at is not None and wedged_at is None and now - ready_at >= wedge_at:
            os.kill(proc.pid, signal.SIGUSR1)
            wedged_at = now
        message = notify.next(0.05)
        if message is not None and "READY=1" in message and last is None:
            last = ready_at = time.monotonic()
        if message is not None and "WATCHDOG=1" in message and last is not None:
            last = time.monotonic()
            if wedged_at is None:
                pings += 1
            else:
                late += 1
        if last is not None and time.monotonic() - last > watchdog:
            assert wedged_at is not None, "the watchdog fired before the loop was wedged"
            proc.send_signal(signal.SIGABRT)  # systemd's watchdog signal
            proc.wait(timeout=10)
            return pings, late, time.monotonic() - wedged_at
        assert time.monotonic() - start < 30, "the pings never stopped"


async def test_a_wedged_event_loop_stops_the_watchdog_pings_and_is_restarted(tmp_path: Path) -> None:
    unit = (REPO / "image/mkosi.extra/usr/lib/systemd/system/gateway.service").read_text()
    assert "\nWatchdogSec=30\n" in unit and "\nRestart=on-failure\n" in unit and "\nType=notify\n" in unit
    pki = make_pki(tmp_path)
    hub = Hub(dataclasses.replace(PLANE_LIMITS, heartbeat_ms=1000))
    async with _plane(tmp_path, hub) as url:
        config = gateway_config(tmp_path, url, pki)
        notify = Notify(tmp_path / "notify.sock")
        watchdog_s = 0.6
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
        env["PYTHONPATH"] = str(REPO)
        try:
            restarts = []
            for _ in range(2):  # Restart=on-failure: the second run is systemd's restart
                proc = subprocess.Popen([PYTHON, "-c", WEDGEABLE, str(config)], cwd=REPO, env=env,
                                        stdin=subprocess.DEVNULL)  # fmt: skip
                try:
                    result = await asyncio.to_thread(supervise_once, proc, notify, watchdog_s, 2.0)
                finally:
                    stop_process(proc)
                assert proc.returncode == -signal.SIGABRT
                restarts.append(result)
        finally:
            notify.close()
    for pings, late, fired in restarts:
        # Pinged every WATCHDOG_USEC/2 while alive; silent once wedged (one ping may have been on
        # its way), and caught within one timeout of the last ping.
        assert pings >= 4 and late <= 1
        assert fired < watchdog_s + 1.0
    print(
        f"\nwatchdog: pings every {watchdog_s / 2:.1f} s;"
        f" a wedged loop caught {restarts[0][2]:.2f} s after the wedge"
    )


async def test_a_plane_that_answers_pings_but_no_health_record_is_redialled(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    hub = Hub(dataclasses.replace(PLANE_LIMITS, heartbeat_ms=1000))
    asked: list[int] = []

    async def never_answers(gateway_id: str, message: Message) -> Message:
        asked.append(int(message["seq"]))  # type: ignore[call-overload]
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    hub.register_control(health.HEALTH, never_answers)
    async with _plane(tmp_path, hub) as url:
        config = gateway_config(tmp_path, url, pki, health_interval=1)
        proc = subprocess.Popen([PYTHON, "-m", "gateway", "run", "--config", str(config)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            status = tmp_path / "status.json"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                report = json.loads(status.read_text()) if status.exists() else {}
                if report.get("connects", 0) >= 2:
                    break
                await asyncio.sleep(0.2)
            assert report.get("connects", 0) >= 2, report
            assert len(asked) >= 3
        finally:
            stop_process(proc)


async def test_a_plane_without_a_health_handler_gets_no_records_and_relays_as_before(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    hub = Hub(dataclasses.replace(PLANE_LIMITS, heartbeat_ms=1000))  # a plane of the first revision
    async with running_target() as target, _plane(tmp_path, hub) as url:
        targets = (
            f"targets:\n  - name: t1\n    url: {target}\n    kind: http\n    allow_private: [127.0.0.1]\n"
        )
        config = gateway_config(tmp_path, url, pki, targets, health_interval=1)
        log = tmp_path / "gateway.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([PYTHON, "-m", "gateway", "run", "--config", str(config)], cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out)  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "does not take health records" not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert "does not take health records" in log.read_text()
            await asyncio.sleep(2.5)  # two more intervals: nothing more is sent, nothing breaks
            assert log.read_text().count("does not take health records") == 1
            async with aiohttp.ClientSession() as http:
                caller = plane_ssl_context_for_caller(pki)
                path = f"{url}/v1/gateways/{pki.gateway_id}/targets/t1/small"
                async with http.get(path, ssl=caller) as resp:
                    assert resp.status == 200
            report = json.loads((tmp_path / "status.json").read_text())
            assert report["state"] == "connected" and report["connects"] == 1
            assert (
                report["health_acked_at"] is None and report["health_at"] is not None
            )  # the console still has it
        finally:
            stop_process(proc)


def plane_ssl_context_for_caller(pki):  # type: ignore[no-untyped-def]
    return ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))


@contextlib.asynccontextmanager
async def _plane(tmp_path: Path, hub: Hub) -> AsyncIterator[str]:
    """An in-process hub on loopback with real TLS (tunnel_support's PKI); yields its URL."""
    app = web.Application()
    setup_hub(app, hub)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=plane_ssl_context(tmp_path / "plane"))
    await site.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
