"""Faults: plane killed and restarted, blackholed link, GOAWAY drain, 200 reconnect cycles without leaks."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
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
    rss_kib,
    running_plane,
    running_target,
    spawn_plane,
    stop_process,
)


async def wait_until(predicate, timeout: float, step: float = 0.01) -> float:
    """Seconds until predicate() holds (AssertionError after timeout)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return loop.time() - start


async def test_plane_killed_and_restarted(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    port = free_port()
    proc = spawn_plane(pki, port)
    async with running_target() as target:
        relay = make_relay(tmp_path, {"t1": target})
        client = make_client(pki, URL(f"https://127.0.0.1:{port}"), relay)
        task = asyncio.create_task(client.run())
        caller_ssl = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            # An in-flight stream: the target takes 30 s to answer.
            async with aiohttp.ClientSession() as http:
                url = f"https://127.0.0.1:{port}/v1/gateways/{pki.gateway_id}/targets/t1/slow?s=30"
                inflight = asyncio.create_task(http.get(url, ssl=caller_ssl))
                await wait_until(lambda: client.mux is not None and len(client.mux.streams) == 1, 5)
                proc.kill()
                proc.wait()
                # The gateway notices, resets the stream and abandons the target request.
                await wait_until(lambda: not relay._tasks, 5)
                with pytest.raises(aiohttp.ClientError):
                    await inflight
            await wait_until(lambda: client.state in (State.BACKOFF, State.CONNECTING), 5)
            before = client.connects
            proc = spawn_plane(pki, port)
            took = await wait_until(lambda: client.connects > before and client.state is State.CONNECTED, 10)
            assert took < 2.0 + client.backoff.cap, took
        finally:
            await client.stop(1)
            await task
            await relay.close()
            stop_process(proc)


async def test_blackholed_link_detected_within_heartbeat_bound(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    port = free_port()
    proc = spawn_plane(pki, port)
    relay = make_relay(tmp_path, {})
    heartbeat = 0.5
    client = make_client(pki, URL(f"https://127.0.0.1:{port}"), relay, heartbeat_ms=int(heartbeat * 1000))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 10)
        os.kill(proc.pid, signal.SIGSTOP)  # TCP stays open; nothing answers
        took = await wait_until(lambda: client.state is not State.CONNECTED, 10)
        # Two missed pings, plus one check period of slack.
        assert took <= 2 * heartbeat + heartbeat / 4 + 0.3, took
        assert client.last_error is not None and "heartbeat-timeout" in client.last_error
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc)
        await client.stop(1)
        await task
        await relay.close()


async def test_goaway_drains_in_flight_streams_then_reconnects(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with running_target() as target, running_plane(pki) as (plane, hub, _runner):
        relay = make_relay(tmp_path, {"t1": target})
        client = make_client(pki, plane, relay)
        task = asyncio.create_task(client.run())
        caller_ssl = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            async with aiohttp.ClientSession() as http:
                url = f"{plane}/v1/gateways/{pki.gateway_id}/targets/t1/slow?s=1"
                inflight = asyncio.create_task(http.get(url, ssl=caller_ssl))
                await wait_until(lambda: client.mux is not None and len(client.mux.streams) == 1, 5)
                session = hub.session(pki.gateway_id)
                assert session is not None and session.mux is not None
                session.mux.goaway()
                await wait_until(lambda: client.state is State.DRAINING, 2)
                resp = await inflight
                assert resp.status == 200 and await resp.text() == "late"
                resp.release()
            await wait_until(lambda: client.connects == 2 and client.state is State.CONNECTED, 5)
        finally:
            await client.stop(1)
            await task
            await relay.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_200_reconnect_cycles_leak_nothing(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with running_plane(pki) as (plane, hub, _runner):
        relay = make_relay(tmp_path, {})
        client = make_client(pki, plane, relay)
        task = asyncio.create_task(client.run())

        async def cycle(n: int) -> None:
            for _ in range(n):
                await wait_until(lambda: client.state is State.CONNECTED, 5)
                before = client.connects
                session = hub.session(pki.gateway_id)
                assert session is not None and session.ws is not None
                await session.ws.close()
                await wait_until(lambda b=before: client.connects > b and client.state is State.CONNECTED, 5)

        try:
            await cycle(20)  # warm up: caches, lazily created objects
            gc.collect()
            fds, tasks, rss = open_fds(), len(asyncio.all_tasks()), rss_kib(os.getpid())
            await cycle(200)
            gc.collect()
            await asyncio.sleep(0.1)
            assert client.connects >= 220
            assert open_fds() - fds <= 2, (fds, open_fds())
            assert len(asyncio.all_tasks()) - tasks <= 2
            assert rss_kib(os.getpid()) - rss < 16 * 1024
        finally:
            await client.stop(1)
            await task
            await relay.close()


async def test_plane_shutdown_sends_goaway_and_drains_in_flight_streams(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    states: list[State] = []
    async with running_target() as target:
        relay = make_relay(tmp_path, {"t1": target})
        async with running_plane(pki) as (plane, hub, runner):
            client = make_client(pki, plane, relay, on_state=lambda s, r: states.append(s))
            task = asyncio.create_task(client.run())
            caller_ssl = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
            try:
                await asyncio.wait_for(client.connected.wait(), 5)
                async with aiohttp.ClientSession() as http:
                    url = f"{plane}/v1/gateways/{pki.gateway_id}/targets/t1/slow?s=1"
                    inflight = asyncio.create_task(http.get(url, ssl=caller_ssl))
                    await wait_until(lambda: client.mux is not None and len(client.mux.streams) == 1, 5)
                    # A planned shutdown: drain first (tunnels are still read), then the runner's cleanup.
                    drain = asyncio.create_task(hub.drain(5))
                    resp = await inflight
                    assert resp.status == 200 and await resp.text() == "late"
                    resp.release()
                    assert await drain
                    async with http.get(url, ssl=caller_ssl) as refused:
                        assert refused.status == 503  # no new streams while going away
                    await runner.cleanup()
                assert State.DRAINING in states
                await wait_until(lambda: client.state in (State.BACKOFF, State.CONNECTING), 5)
            finally:
                await client.stop(1)
                await task
                await relay.close()
