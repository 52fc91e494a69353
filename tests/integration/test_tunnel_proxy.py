"""The tunnel through a real HTTP CONNECT proxy (Debian's tinyproxy), with and without basic auth."""

from __future__ import annotations

import asyncio
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

from gateway.tunnel import AuthRejected, State
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
    tmp_path: Path, auth: tuple[str, str] | None
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
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

    def start(auth: tuple[str, str] | None) -> tuple[int, Path]:
        proc, port, log = start_tinyproxy(tmp_path, auth)
        procs.append(proc)
        return port, log

    yield start
    for proc in procs:
        stop_process(proc)


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


async def test_wrong_proxy_password_stops_retrying(tmp_path: Path, proxy_factory) -> None:
    pki = make_pki(tmp_path)
    port, _log = proxy_factory(("gw", "right"))
    async with running_plane(pki) as (plane, hub, _runner):
        client = make_client(
            pki, plane, make_relay(tmp_path, {}), proxy=URL(f"http://gw:wrong@127.0.0.1:{port}")
        )
        with pytest.raises(AuthRejected, match="proxy refused our credentials"):
            await asyncio.wait_for(client.run(), 10)
        assert client.state is State.STOPPED and hub.sessions() == []
