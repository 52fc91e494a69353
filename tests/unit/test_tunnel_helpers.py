"""Pure helpers of the tunnel client and daemon: backoff, proxy settings, sd_notify."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import aiohttp
from yarl import URL

from gateway.daemon import sd_notify, watchdog_interval
from gateway.tunnel.backoff import Backoff
from gateway.tunnel.proxy import proxy_settings, redact


def test_backoff_is_capped_full_jitter_and_resets() -> None:
    b = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    ceilings = [0.5, 1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        assert 0 <= b.next_delay() <= ceiling
    delays = [Backoff(0.5, 8.0, rng=random.Random(i), attempt=10).next_delay() for i in range(200)]
    assert max(delays) <= 8.0 and min(delays) < 1.0  # full jitter spreads over [0, cap]
    b.reset()
    assert b.attempt == 0 and b.next_delay() <= 0.5
    assert Backoff(attempt=10_000).next_delay() <= 30.0  # no float overflow after a long outage


def test_proxy_credentials_move_to_basic_auth() -> None:
    url, auth = proxy_settings(URL("http://gw:p%40ss@proxy.corp:3128"))
    assert url == URL("http://proxy.corp:3128")
    assert auth == aiohttp.BasicAuth("gw", "p@ss")
    assert proxy_settings(URL("http://proxy:3128")) == (URL("http://proxy:3128"), None)
    assert proxy_settings(None) == (None, None)
    assert "p%40ss" not in redact(URL("http://gw:p%40ss@proxy.corp:3128")) and "***" in redact(
        URL("http://gw:x@proxy.corp:3128")
    )


def test_sd_notify_datagram(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    try:
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        assert sock.recv(100) == b"READY=1"
        assert not sd_notify("READY=1", {})
        assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    finally:
        sock.close()


def test_sd_notify_never_blocks_on_a_full_socket(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "n.sock")}
        results = [sd_notify("WATCHDOG=1", env) for _ in range(2000)]  # nobody reads
        assert results[0] and not results[-1]
    finally:
        sock.close()


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not us
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
