"""`mgmtplane forward` over the real chain: plane -> tunnel -> `gateway run` -> target, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.integration import plane_helpers
from tests.integration.sdk_support import (
    Chain,
    Target,
    chain,
    free_port,
    read_forward_url,
    start_forward,
    stop,
)
from tests.integration.tunnel_support import rss_kib, target_app, write_policies

BIG = 64 * 1024 * 1024
COOKIE = "vmware_soap_session=abc"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("forward")
    targets = [Target("t1", "http"), Target("vs", "vsphere-soap")]
    with chain(root, targets, [write_policies(root)]) as c:
        yield c


@contextlib.asynccontextmanager
async def serving(port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(target_app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def test_credentials_map_and_the_admin_token_stays_with_the_plane(env: Chain) -> None:
    admin = env.plane.admin_token()
    async with serving(env.targets["t1"].port):
        with env.forward("t1") as fwd:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{fwd.url}/headers?a=1&b=%2F",
                    headers={
                        "Authorization": "Basic dGFyZ2V0",
                        "Cookie": "vmware_soap_session=abc",
                        "X-Foo": "1",
                    },
                ) as r,
            ):
                seen = {k.lower(): v for k, v in (await r.json()).items()}
            assert r.status == 200
            assert r.headers["X-Gateway-Filter"] == "test-passthrough; removed=0"
    assert seen["authorization"] == "Basic dGFyZ2V0"
    assert seen["cookie"] == COOKIE  # X-Target-Cookie, mapped back by the plane
    assert seen["x-foo"] == "1"
    assert admin not in json.dumps(seen)
    assert not any(k.startswith("x-target-") for k in seen)


async def test_bodies_stream_both_ways_without_buffering(env: Chain) -> None:
    async with serving(env.targets["t1"].port):
        with env.forward("t1") as fwd:
            before = rss_kib(fwd.proc.pid)
            async with aiohttp.ClientSession() as http:
                body = bytes(range(256)) * 8192  # 2 MiB, with Content-Length
                async with http.post(f"{fwd.url}/echo", data=io.BytesIO(body)) as r:
                    assert r.status == 200
                    assert r.headers["X-Request-Length"] == str(len(body))
                    assert await r.read() == body

                async def chunks() -> AsyncIterator[bytes]:
                    for _ in range(16):
                        yield b"c" * 65536

                async with http.post(f"{fwd.url}/echo", data=chunks()) as r:
                    assert r.status == 200 and len(await r.read()) == 16 * 65536
                got = 0
                async with http.get(f"{fwd.url}/sized?size={BIG}") as r:
                    assert r.status == 200 and r.content_length == BIG
                    async for chunk in r.content.iter_chunked(1 << 20):
                        got += len(chunk)
                assert got == BIG
            grown = rss_kib(fwd.proc.pid) - before
    # 64 MiB went through; a forward that buffered whole bodies would have grown by that much.
    assert grown < 24 * 1024, f"forward RSS grew by {grown} KiB"


@pytest.mark.parametrize(
    ("target", "method", "path", "status", "code", "words"),
    [
        ("t1", "DELETE", "/small", 403, "filtered", "no rule allows DELETE /small"),
        ("vs", "GET", "/folder/ds/vm.vmdk", 403, "filtered", "/folder on vSphere hosts"),
        ("nope", "GET", "/x", 404, "target-unknown", "no target named 'nope'"),
    ],
)
async def test_refusals_pass_through_with_their_reason(
    env: Chain, target: str, method: str, path: str, status: int, code: str, words: str
) -> None:
    with env.forward(target) as fwd:
        async with aiohttp.ClientSession() as http, http.request(method, fwd.url + path) as r:
            body = await r.json()
            reason, header = r.reason or "", r.headers["X-Relay-Refusal"]
    assert r.status == status
    assert body["error"] == code and words in body["message"]
    assert header.startswith(f"{code}: ") and words in header
    assert reason.startswith(f"Relay refused: {code}: ")


async def test_requests_for_another_host_name_are_refused(env: Chain) -> None:
    # A web page reaching 127.0.0.1 through DNS rebinding still sends its own Host.
    with env.forward("t1") as fwd:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{fwd.url}/small", headers={"Host": "attacker.example"}) as r,
        ):
            assert r.status == 421
            assert (await r.json())["error"] == "misdirected"


def test_sigint_stops_the_forward_cleanly(env: Chain) -> None:
    proc = start_forward(env.plane.state_dir, "gw-sdk", "t1")  # the hostname resolves to the id
    url = read_forward_url(proc)
    assert url.startswith("http://127.0.0.1:")
    assert stop(proc, signal.SIGINT) == 0
    assert proc.stdout is not None
    proc.stdout.close()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "0.0.0.0:0"], "is not a loopback address"),
        (["--listen", "127.0.0.1:x"], "must be HOST:PORT"),
        (["--url", "http://127.0.0.1:1"], "must be https://"),
        (["--token-file", "/nonexistent/token"], "/nonexistent/token: no admin token"),
    ],
)
def test_bad_arguments_are_one_line_errors(env: Chain, args: list[str], words: str) -> None:
    cmd = [sys.executable, "-m", "mgmtplane", "forward", env.gateway_id, "t1"]
    cmd += ["--state-dir", str(env.plane.state_dir), "--listen", "127.0.0.1:0", *args]
    result = subprocess.run(cmd, env=plane_helpers._env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_unknown_gateway_name_is_a_one_line_error(env: Chain) -> None:
    cmd = [sys.executable, "-m", "mgmtplane", "forward", "no-such-gw", "t1", "--state-dir"]
    cmd += [str(env.plane.state_dir)]
    result = subprocess.run(cmd, env=plane_helpers._env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "neither a registered gateway id nor a hostname" in result.stderr


async def test_an_unreachable_plane_is_a_502_with_the_reason(env: Chain) -> None:
    closed = free_port()
    with env.forward("t1", "--url", f"https://127.0.0.1:{closed}") as fwd:
        async with aiohttp.ClientSession() as http, http.get(f"{fwd.url}/small") as r:
            body = await r.json()
            assert r.status == 502 and body["error"] == "plane-unreachable"
            assert r.headers["X-Relay-Refusal"].startswith("plane-unreachable: ")


async def test_the_running_gateway_has_not_loaded_cryptography(env: Chain) -> None:
    """Memory (docs/relay-performance.md): connected, past the ca-update the plane sends on every
    new tunnel, and with a call relayed, `gateway run` has not loaded cryptography (7-8 MiB
    resident): it needs it only to renew and to check a CA set that changed."""
    async with serving(env.targets["t1"].port):
        with env.forward("t1") as fwd:
            async with aiohttp.ClientSession() as http, http.get(f"{fwd.url}/headers") as r:
                assert r.status == 200
    await asyncio.sleep(0.5)  # the ca-update goes out before any call; this leaves it time to land
    maps = Path(f"/proc/{env.gateway.pid}/maps").read_text()
    assert "/cryptography/" not in maps and "/bcrypt/" not in maps
