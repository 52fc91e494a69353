"""The tunnel through a real HTTP CONNECT proxy (Debian's tinyproxy), with and without basic auth."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway.tunnel.client import State
from tests.integration.tunnel_support import (
    free_port,
    make_client,
    make_pki,
    make_relay,
    running_plane,
    running_target,
    stop_process,
)

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
pytestmark = pytest.mark.skipif(not Path(TINYPROXY).exists(), reason="tinyproxy is not installed")


def start_tinyproxy(
    tmp_path: Path, auth: tuple[str, str] | None, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = port or free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        "MaxClients 20",
        "Allow 127.0.0.1",
        f'LogFile "{log}"',
        "LogLevel Connect",
    ]
    if auth:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, log
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("tinyproxy did not start")


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def start(auth: tuple[str, str] | None, port: int | None = None) -> tuple[int, Path]:
        proc, port, log = start_tinyproxy(tmp_path, auth, port)
        procs.append(proc)
        return port, log

    def stop_all() -> None:
        for proc in procs:
            stop_process(proc)

    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start
    stop_all()


@pytest.mark.parametrize("auth", [None, ("gw", "s3cret-p4ss")], ids=["open", "basic-auth"])
async def test_tunnel_and_relay_through_connect_proxy(tmp_path: Path, proxy_factory, auth) -> None:
    pki = make_pki(tmp_path)
    port, log = proxy_factory(auth)
    userinfo = f"{auth[0]}:{auth[1].replace(':', '%3A')}@" if auth else ""
    proxy = URL(f"http://{userinfo}127.0.0.1:{port}")
    async with running_target() as target, running_plane(pki) as (plane, hub, _runner):
        relay = make_relay(tmp_path, {"t1": target})
        client = make_client(pki, plane, relay, proxy=proxy)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            caller_ssl = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{plane}/v1/gateways/{pki.gateway_id}/targets/t1/small", ssl=caller_ssl) as r,
            ):
                assert r.status == 200 and len(await r.read()) > 1000
            (session,) = hub.sessions()
            assert session["connected"]
        finally:
            await client.stop(1)
            await task
            await relay.close()
    # The tunnel really went through the proxy: tinyproxy logged the CONNECT to the plane.
    assert f"CONNECT 127.0.0.1:{plane.port}" in log.read_text() or "Established connection" in log.read_text()


async def test_wrong_proxy_password_is_retried_slowly_until_the_proxy_accepts(
    tmp_path: Path, proxy_factory
) -> None:
    """A proxy refusing our credentials does not stop the gateway (docs/protocol.md §11): the
    account may be fixed on the proxy's side, where the appliance cannot see it. Retries are at
    least proxy_auth_delay apart, so a directory behind the proxy does not lock the account."""
    pki = make_pki(tmp_path)
    port, _log = proxy_factory(("gw", "old-password"))
    backoffs: list[float] = []

    def on_state(state: State, reason: str) -> None:
        if state is State.BACKOFF:
            backoffs.append(time.monotonic())

    async with running_plane(pki) as (plane, hub, _runner):
        relay = make_relay(tmp_path, {})
        client = make_client(
            pki, plane, relay, proxy=URL(f"http://gw:new-password@127.0.0.1:{port}"),
            proxy_auth_delay=0.5, on_state=on_state,
        )  # fmt: skip
        task = asyncio.create_task(client.run())
        try:
            while client.failures < 3:
                assert not task.done(), task
                await asyncio.sleep(0.02)
            assert client.state in (State.BACKOFF, State.CONNECTING) and client.stop_reason is None
            assert client.last_error is not None and "proxy refused our credentials" in client.last_error
            assert client.action is not None and "proxy" in client.action
            # The backoff alone (base 0.05, cap 0.5) would retry sooner than this floor.
            assert all(b - a >= 0.5 for a, b in itertools.pairwise(backoffs[:3])), backoffs
            assert hub.sessions() == []
            # The proxy's administrator sets the password the appliance has: no restart here.
            proxy_factory.stop_all()
            proxy_factory(("gw", "new-password"), port)
            await asyncio.wait_for(client.connected.wait(), 10)
            (session,) = hub.sessions()
            assert session["connected"]
        finally:
            await client.stop(1)
            await task
            await relay.close()
