"""`gateway run` as a subprocess: sd_notify READY/WATCHDOG, SIGHUP reload, SIGTERM, 1 GiB in bounded RSS."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from mgmtplane.hub import Hub
from tests.integration.tunnel_support import (
    PYTHON,
    REPO,
    Pki,
    make_pki,
    rss_kib,
    running_plane,
    running_target,
    stop_process,
    write_policies,
)


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    notify: socket.socket
    targets: Path
    pki: Pki
    plane: URL
    hub: Hub

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return out


def write_targets(path: Path, targets: dict[str, URL]) -> None:
    lines = ["targets:"]
    for name, url in targets.items():
        lines += [f"  - name: {name}", f"    url: {url}", "    kind: http", "    allow_private: [127.0.0.1]"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


async def wait_for(predicate, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    pki = make_pki(tmp_path)
    async with running_target() as target, running_plane(pki) as (plane, hub, _runner):
        targets = tmp_path / "targets.yaml"
        write_targets(targets, {"t1": target})
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"plane_url: {plane}\nstate_dir: {pki.state_dir}\ntargets: {targets}\n"
            f"policy_dirs: [{write_policies(tmp_path)}]\nheartbeat_interval: 1\n"
            "backoff_base: 0.05\nbackoff_cap: 0.5\ndrain_timeout: 2\n"
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.setblocking(False)
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
        proc = subprocess.Popen(
            [PYTHON, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        gw = Gateway(proc, notify, targets, pki, plane, hub)
        try:
            await wait_for(lambda: any(s["connected"] for s in hub.sessions()), 15)
            yield gw
        finally:
            stop_process(proc)
            notify.close()


def relay_url(gw: Gateway, target: str, path: str) -> str:
    return f"{gw.plane}/v1/gateways/{gw.pki.gateway_id}/targets/{target}{path}"


async def test_notify_reload_and_graceful_stop(gateway: Gateway) -> None:
    await asyncio.sleep(0.5)
    messages = "\n".join(gateway.messages())
    assert "READY=1" in messages and "WATCHDOG=1" in messages and "STATUS=tunnel connected" in messages
    caller_ssl = ssl.create_default_context(cafile=str(gateway.pki.plane_dir / "ca.pem"))
    (before,) = gateway.hub.sessions()
    async with aiohttp.ClientSession() as http:
        async with http.get(relay_url(gateway, "t2", "/small"), ssl=caller_ssl) as r:
            assert r.status == 404  # not in the inventory yet
        async with running_target() as second:
            write_targets(gateway.targets, {"t1": second, "t2": second})
            gateway.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: "RELOADING=1" in "".join(gateway.messages()), 5)
            await asyncio.sleep(0.2)
            async with http.get(relay_url(gateway, "t2", "/small"), ssl=caller_ssl) as r:
                assert r.status == 200
    (after,) = gateway.hub.sessions()
    assert after["connected_since"] == before["connected_since"]  # the tunnel was not dropped
    gateway.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.proc.wait, 10) == 0
    assert "STOPPING=1" in "".join(gateway.messages())
    await wait_for(lambda: not gateway.hub.sessions()[0]["connected"], 5)


async def test_missing_inventory_starts_empty_and_sighup_loads_it(gateway: Gateway) -> None:
    gateway.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.proc.wait, 10) == 0
    targets_text = gateway.targets.read_text()
    gateway.targets.unlink()
    config = gateway.targets.parent / "gateway.yaml"
    proc = subprocess.Popen([PYTHON, "-m", "gateway", "run", "--config", str(config)], cwd=REPO)
    try:
        caller_ssl = ssl.create_default_context(cafile=str(gateway.pki.plane_dir / "ca.pem"))
        async with aiohttp.ClientSession() as http:
            status = 0
            for _ in range(100):
                async with http.get(relay_url(gateway, "t1", "/small"), ssl=caller_ssl) as r:
                    status = r.status
                if status != 503:
                    break
                await asyncio.sleep(0.1)
            assert status == 404  # tunnel up, inventory empty
            gateway.targets.write_text(targets_text)
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with http.get(relay_url(gateway, "t1", "/small"), ssl=caller_ssl) as r:
                assert r.status == 200
    finally:
        stop_process(proc)


async def test_bad_reload_keeps_the_old_inventory(gateway: Gateway) -> None:
    gateway.targets.write_text("targets: [{name: broken}]\n")
    gateway.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert gateway.proc.poll() is None
    caller_ssl = ssl.create_default_context(cafile=str(gateway.pki.plane_dir / "ca.pem"))
    async with (
        aiohttp.ClientSession() as http,
        http.get(relay_url(gateway, "t1", "/small"), ssl=caller_ssl) as r,
    ):
        assert r.status == 200


@pytest.mark.timeout(300)  # 1 GiB through three processes on a shared 2-core box
async def test_one_gib_response_streams_with_bounded_gateway_memory(gateway: Gateway) -> None:
    caller_ssl = ssl.create_default_context(cafile=str(gateway.pki.plane_dir / "ca.pem"))
    size = 1 << 30
    async with aiohttp.ClientSession() as http:
        async with http.get(relay_url(gateway, "t1", "/small"), ssl=caller_ssl) as r:  # warm up
            await r.read()
        baseline = rss_kib(gateway.proc.pid)
        peak = baseline
        got = 0
        async with http.get(
            relay_url(gateway, "t1", f"/sized?size={size}"),
            ssl=caller_ssl,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
        ) as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(1 << 20):
                got += len(chunk)
                peak = max(peak, rss_kib(gateway.proc.pid))
    assert got == size
    growth_mib = (peak - baseline) / 1024
    print(
        f"gateway RSS baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
        f"growth {growth_mib:.1f} MiB"
    )
    assert growth_mib < 64


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("plane_url: http://insecure\n")
    proc = subprocess.run(
        [PYTHON, "-m", "gateway", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {config}: plane_url: expected a https:// URL with a host"
    ]
