"""Shared pieces for the tunnel/relay integration tests and the relay bench: PKI, plane, targets, gateway.

Also runnable: `python -m tests.integration.tunnel_support plane --dir D --port P` starts a plane
(setup_hub on a minimal aiohttp app, TLS from D) in its own process, so tests can kill or stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gateway.tunnel.backoff import Backoff
from gateway.tunnel.client import TunnelClient, client_ssl_context
from gwcore import protocol as p
from mgmtplane import tls_alerts
from mgmtplane.front import FrontSite
from mgmtplane.hub import PLANE_LIMITS, Hub, setup_hub

if TYPE_CHECKING:
    import trustme

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

PASSTHROUGH_POLICY = """\
kind: http
rules:
  - name: test-filtered
    path: /inventory
    json:
      - "[].id"
      - "[].name"
  - name: test-passthrough
    path: /**
    methods: [GET, POST, PUT]
    allow_write: true
    passthrough: true
"""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    """A plane CA, the plane's server certificate and one registered gateway's identity, on disk."""

    root: Path
    ca: trustme.CA
    gateway_id: str

    @property
    def state_dir(self) -> Path:
        return self.root / "gw-state"

    @property
    def plane_dir(self) -> Path:
        return self.root / "plane"


def make_pki(root: Path) -> Pki:
    """Write plane/{ca,server,server-key}.pem and gw-state/{ca,cert,key}.pem under `root`."""
    import trustme  # here, not at the top: planes spawned from this module stay lean

    ca = trustme.CA()
    gateway_id = str(uuid.uuid4())
    pki = Pki(root, ca, gateway_id)
    pki.plane_dir.mkdir(parents=True, exist_ok=True)
    pki.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(pki.plane_dir / "server-key.pem"))
    server.cert_chain_pems[0].write_to_path(str(pki.plane_dir / "server.pem"))
    ca.cert_pem.write_to_path(str(pki.plane_dir / "ca.pem"))
    client = ca.issue_cert(common_name=gateway_id)
    client.private_key_pem.write_to_path(str(pki.state_dir / "key.pem"))
    os.chmod(pki.state_dir / "key.pem", 0o600)
    client.cert_chain_pems[0].write_to_path(str(pki.state_dir / "cert.pem"))
    ca.cert_pem.write_to_path(str(pki.state_dir / "ca.pem"))
    return pki


def plane_ssl_context(plane_dir: Path) -> ssl.SSLContext:
    """The plane's server TLS: its certificate, client certificates optional but verified against its CA."""
    tls_alerts.install()  # a refused client certificate gets its alert, as from `mgmtplane serve`
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(plane_dir / "server.pem", plane_dir / "server-key.pem")
    ctx.load_verify_locations(cafile=plane_dir / "ca.pem")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def plane_app(limits: p.Limits | None = None) -> tuple[web.Application, Hub]:
    """A minimal plane: just the hub (the real app adds registration and bearer auth)."""
    app = web.Application()
    limits = limits or dataclasses.replace(PLANE_LIMITS, heartbeat_ms=1000)
    hub = setup_hub(app, Hub(limits, drain_timeout=5.0))
    return app, hub


@contextlib.asynccontextmanager
async def running_plane(pki: Pki, port: int = 0) -> AsyncIterator[tuple[URL, Hub, web.AppRunner]]:
    """An in-process plane on 127.0.0.1; yields (base URL, hub, runner)."""
    app, hub = plane_app()
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    port = port or free_port()
    # The plane's public listener as `mgmtplane serve` runs it: relay calls on the lean path.
    site = FrontSite(runner, "127.0.0.1", port, ssl_context=plane_ssl_context(pki.plane_dir))
    await site.start()
    try:
        yield URL(f"https://127.0.0.1:{port}"), hub, runner
    finally:
        await runner.cleanup()


def spawn_plane(pki: Pki, port: int) -> subprocess.Popen[bytes]:
    """The plane in its own process (so it can be SIGKILLed or SIGSTOPped); waits until it listens."""
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "tests.integration.tunnel_support",
            "plane",
            "--dir",
            str(pki.plane_dir),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"plane exited with {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("plane did not start listening")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process we started and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# --- targets -------------------------------------------------------------------------------------


def target_app() -> web.Application:
    """A target HTTP server: small JSON, sized streaming bodies, a stall, a redirect, an echo."""
    app = web.Application()
    small = b'{"ok": true, "pad": "' + b"x" * 1000 + b'"}'

    async def small_json(request: web.Request) -> web.Response:
        return web.Response(body=small, content_type="application/json")

    async def sized(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "0"))
        resp = web.StreamResponse()
        resp.content_length = size
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        block = b"\xab" * (256 * 1024)
        left = size
        while left > 0:
            n = min(left, len(block))
            await resp.write(block[:n])
            left -= n
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "30")))
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", "http://169.254.169.254/latest/meta-data/"))

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.headers["X-Request-Length"] = request.headers.get("Content-Length", "chunked")
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def truncated(request: web.Request) -> web.StreamResponse:
        # Promise 10 MB, send 1 MB, then drop the connection.
        resp = web.StreamResponse()
        resp.content_length = 10_000_000
        await resp.prepare(request)
        await resp.write(b"t" * 1_000_000)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def inventory(request: web.Request) -> web.Response:
        items = [{"id": i, "name": f"vm-{i}", "password": f"CANARY-{i}"} for i in range(3)]
        return web.json_response(items, headers={"X-Secret-Header": "CANARY-H"})

    async def huge_headers(request: web.Request) -> web.Response:
        return web.Response(text="x", headers={f"X-H{i}": "v" * 1000 for i in range(80)})

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({k: v for k, v in request.headers.items()})

    app.router.add_get("/small", small_json)
    app.router.add_get("/sized", sized)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_post("/echo", echo)
    app.router.add_get("/headers", headers)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/inventory", inventory)
    app.router.add_get("/huge-headers", huge_headers)
    return app


@contextlib.asynccontextmanager
async def running_target(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[URL]:
    """The target server on 127.0.0.1; yields its base URL."""
    # handler_cancellation: a target handler stops when the gateway drops its connection.
    runner = web.AppRunner(target_app(), shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    try:
        scheme = "https" if ssl_context else "http"
        yield URL(f"{scheme}://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def write_policies(root: Path) -> Path:
    """A policy dir with the explicit passthrough test policy for kind `http`."""
    d = root / "policies"
    d.mkdir(exist_ok=True)
    (d / "test.yaml").write_text(PASSTHROUGH_POLICY)
    return d


def make_relay(
    root: Path, targets: dict[str, URL | str], extra: dict[str, dict[str, object]] | None = None
) -> Relay:
    """A relay for `targets` (name -> URL), loopback explicitly allowed, passthrough policy."""
    items = []
    for name, url in targets.items():
        item: dict[str, object] = {
            "name": name,
            "url": str(url),
            "kind": "http",
            "allow_private": ["127.0.0.1"],
        }
        item.update((extra or {}).get(name, {}))
        items.append(item)
    return Relay(parse_targets({"targets": items}, "test"), load_policies([write_policies(root)]))


def make_client(
    pki: Pki, plane: URL, relay: Relay, *, heartbeat_ms: int = 1000, proxy: URL | None = None, **kw: object
) -> TunnelClient:
    """A tunnel client with fast heartbeat and backoff, for tests."""
    return TunnelClient(
        plane,
        client_ssl_context(pki.state_dir),
        relay.on_open,
        limits=p.Limits(heartbeat_ms=heartbeat_ms),
        backoff=Backoff(0.05, 0.5),
        proxy_url=proxy,
        **kw,  # type: ignore[arg-type]
    )


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["plane"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app, _hub = plane_app()

    async def serve() -> None:
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        ssl_context = plane_ssl_context(args.dir)
        await FrontSite(runner, "127.0.0.1", args.port, ssl_context=ssl_context, shutdown_timeout=2.0).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    _main()
