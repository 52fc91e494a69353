"""The update agent's joins, on loopback: the plane's offer over a real tunnel, the bundle over
mTLS (the tunnel's certificate, the plane's CA pinned) resumed after a cut connection, a wrong
sha256 refused, and the real root helper (`python3 -m updater serve-request`) over a real unix
socket, started per connection as systemd's Accept=yes socket does. On the host there is no A/B
disk: the helper's install, reboot and status commands are small scripts that record what they
were given; the path checks, the downgrade flag, the replies and the reports are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.ssrf import own_addresses
from gateway.relay.targets import parse_targets
from gateway.tunnel.backoff import Backoff
from gateway.tunnel.client import State, client_ssl_context
from gateway.update.agent import UpdateAgent
from gateway.update.helper import UpdateHelper
from gwcore.control import ControlChannel
from gwcore.update import UPDATE_STATUS, UpdateOffer, parse_update_status, update_status_ack
from mgmtplane.front import FrontSite
from mgmtplane.hub import peer_common_name

from .test_tunnel_proxy import TINYPROXY, start_tinyproxy
from .tunnel_support import Pki, free_port, make_client, make_pki, plane_app, plane_ssl_context
from .update_support import Helper, helper_fixture  # noqa: F401 - the fixture "helper"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BUNDLE = os.urandom(3 * 1024 * 1024 + 123)  # not a real bundle: the install command is a script
SHA = hashlib.sha256(BUNDLE).hexdigest()


@dataclass
class BundleServer:
    """The plane's bundle route as the contract has it: mTLS only, Range honoured."""

    cut_first_at: int | None = None  # the first request's connection is cut after this many bytes
    requests: list[tuple[str | None, str | None]] = field(default_factory=list)  # (gateway CN, Range)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        cn = peer_common_name(transport.get_extra_info("ssl_object") if transport else None)
        self.requests.append((cn, request.headers.get("Range")))
        if cn is None:
            raise web.HTTPForbidden(text="a gateway client certificate is required")
        start = 0
        if rng := request.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(BUNDLE) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(BUNDLE) - 1}/{len(BUNDLE)}"
        await resp.prepare(request)
        body = BUNDLE[start:]
        if self.cut_first_at is not None and len(self.requests) == 1:
            await resp.write(body[: self.cut_first_at])
            await asyncio.sleep(0.1)
            assert transport is not None
            transport.abort()  # the connection dies mid-body
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def plane_with_bundles(pki: Pki, bundles: BundleServer) -> AsyncIterator[tuple[URL, object]]:
    app, hub = plane_app()
    app.router.add_get("/v1/releases/{version}/bundle", bundles.handle)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    port = free_port()
    site = FrontSite(runner, "127.0.0.1", port, ssl_context=plane_ssl_context(pki.plane_dir))
    await site.start()
    try:
        yield URL(f"https://127.0.0.1:{port}"), hub
    finally:
        await runner.cleanup()


def _agent(
    pki: Pki,
    tmp_path: Path,
    helper: Helper,
    control: ControlChannel,
    slot: str = "A",
    version: str = "0.1.0",
    proxy: URL | None = None,
) -> UpdateAgent:
    os_release = tmp_path / "os-release"
    os_release.write_text(f'ID=debian\nIMAGE_VERSION="{version}"\n')
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"root=/dev/disk/by-partlabel/root ro rauc.slot={slot} quiet\n")
    return UpdateAgent(
        control,
        updates_dir=helper.updates,
        helper=UpdateHelper(helper.socket_path),
        ssl_context=lambda: client_ssl_context(pki.state_dir),
        proxy_url=proxy,
        os_release=os_release,
        cmdline=cmdline,
        backoff=Backoff(0.05, 0.2),
        trial_poll=0.2,
    )


def _relay() -> Relay:
    return Relay(parse_targets(None, "targets.yaml"), load_policies([]), own_addresses())


async def _until(statuses: list[dict[str, object]], state: str, timeout: float = 30.0) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            for status in statuses:
                if status["state"] == state:
                    return status
            await asyncio.sleep(0.02)


def _offer(base: URL, version: str, **kw: object) -> UpdateOffer:
    url = str(base / "v1/releases" / version / "bundle")
    fields: dict[str, object] = {"version": version, "sha256": SHA, "size": len(BUNDLE), "url": url,
                                 "install": True, "reboot": True, "downgrade": False, "urgent": False,
                                 "rollout": "r-2"}  # fmt: skip
    fields.update(kw)
    return UpdateOffer(**fields)  # type: ignore[arg-type]


async def test_offer_download_resume_install_reboot_and_reports(tmp_path: Path, helper: Helper) -> None:
    pki = make_pki(tmp_path / "pki")
    bundles = BundleServer(cut_first_at=1024 * 1024 + 7)
    (helper.updates / "agent.json").write_text(json.dumps({"target": "0.1.2", "rollout": "r-1"}))
    statuses: list[dict[str, object]] = []

    async def on_status(gateway_id: str, message: dict[str, object]) -> dict[str, object]:
        statuses.append(parse_update_status(message).record())
        return update_status_ack()

    async with plane_with_bundles(pki, bundles) as (base, hub):
        hub.register_control(UPDATE_STATUS, on_status)  # type: ignore[attr-defined]
        control = ControlChannel("gateway")
        agent = _agent(pki, tmp_path, helper, control)
        agent.register()
        client = make_client(pki, base, _relay(), control=control, on_state=lambda s, r: agent.on_state(s))
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(agent.run())]
        try:
            # On the new tunnel: the updater's recorded outcome, with the rollout id kept on /var.
            first = await _until(statuses, "rolled-back")
            assert first == {**first, "running": "0.1.0", "slot": "A", "target": "0.1.2", "rollout": "r-1",
                             "reason": "gateway.service failed"}  # fmt: skip
            assert client.state is State.CONNECTED
            channel = hub.control(pki.gateway_id)  # type: ignore[attr-defined]
            # The same release in the same rollout is not installed again.
            channel.send(_offer(base, "0.1.2", rollout="r-1").message())
            async with asyncio.timeout(10):
                while len(statuses) < 2:
                    await asyncio.sleep(0.02)
            assert statuses[1] == {**first, "at": statuses[1]["at"]} and bundles.requests == []

            channel.send(_offer(base, "0.1.1", downgrade=True).message())
            await _until(statuses, "rebooting")
            states = [s["state"] for s in statuses]
            assert states[:2] == ["rolled-back", "rolled-back"]
            assert states[states.index("downloading"):] == [
                "downloading", *(["downloading"] * (states.count("downloading") - 1)),
                "downloaded", "installing", "installed", "rebooting",
            ]  # fmt: skip
            assert all(s["target"] == "0.1.1" and s["rollout"] == "r-2" for s in statuses[2:])
            # Cut after 1 MiB, then resumed from what was on disk, with the gateway's certificate.
            assert bundles.requests[0] == (pki.gateway_id, None)
            assert bundles.requests[1][0] == pki.gateway_id
            assert bundles.requests[1][1] == f"bytes={1024 * 1024 + 7}-"
            assert any(str(s["reason"] or "").startswith("retrying: download cut off") for s in statuses)
            # The helper got the file it checked, with the flag, and the whole bundle; then the reboot.
            incoming = str(tmp_path / "incoming" / "0.1.1.raucb")
            async with asyncio.timeout(10):
                while len(helper.recorded()) < 2:  # the helper answers first, then reboots
                    await asyncio.sleep(0.02)
            assert helper.recorded() == [[[incoming, "--allow-downgrade"], SHA], ["reboot"]]
            assert sorted(p.name for p in helper.updates.iterdir()) == ["agent.json"]

            # A bundle that does not match the offer's sha256: deleted, reported, never installed.
            channel.send(_offer(base, "0.1.3", sha256="0" * 64).message())
            failed = await _until(statuses, "failed")
            assert failed["target"] == "0.1.3"
            assert str(failed["reason"]).startswith(f"sha256 mismatch: the bundle has {SHA}")
            assert sorted(p.name for p in helper.updates.iterdir()) == ["agent.json"]
            assert len(helper.recorded()) == 2
        finally:
            await agent.close()
            await client.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await control.close()


async def test_the_helper_refuses_over_the_socket_and_a_refusal_is_reported(
    tmp_path: Path, helper: Helper
) -> None:
    # Hostile requests over the real socket: nothing is run, each answer is one line with the reason.
    ask = UpdateHelper(helper.socket_path).ask
    for request in (
        {"op": "install", "bundle": "/etc/shadow"},
        {"op": "install", "bundle": str(helper.updates / ".." / "x.raucb")},
        {"op": "exec", "argv": ["id"]},
    ):
        reply = await ask(request)
        assert reply["ok"] is False and str(reply["reason"]).startswith("refused: ")
    (tmp_path / "secret").write_text("root's")
    (helper.updates / "0.1.1.raucb").symlink_to(tmp_path / "secret")
    reply = await ask({"op": "install", "bundle": str(helper.updates / "0.1.1.raucb"), "downgrade": False})
    assert reply["ok"] is False and "without following links" in str(reply["reason"])
    assert helper.recorded() == []

    # The updater refuses the bundle (signature): reported as failed with its one-line reason.
    helper.install_exit = 1
    helper.stop()
    helper.socket_path.unlink()
    helper.procs.clear()
    helper.start()
    (helper.updates / "0.1.1.raucb").unlink()
    pki = make_pki(tmp_path / "pki")
    bundles = BundleServer()
    statuses: list[dict[str, object]] = []

    async def on_status(gateway_id: str, message: dict[str, object]) -> dict[str, object]:
        statuses.append(parse_update_status(message).record())
        return update_status_ack()

    async with plane_with_bundles(pki, bundles) as (base, hub):
        hub.register_control(UPDATE_STATUS, on_status)  # type: ignore[attr-defined]
        control = ControlChannel("gateway")
        agent = _agent(pki, tmp_path, helper, control)
        agent.register()
        client = make_client(pki, base, _relay(), control=control, on_state=lambda s, r: agent.on_state(s))
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(agent.run())]
        try:
            await _until(statuses, "rolled-back")
            hub.control(pki.gateway_id).send(_offer(base, "0.1.1").message())  # type: ignore[attr-defined]
            failed = await _until(statuses, "failed")
            assert (
                failed["reason"]
                == f"{helper.updates / '0.1.1.raucb'}: refused: signature verification failed"
            )
            assert [s["state"] for s in statuses][-2:] == ["installing", "failed"]
        finally:
            await agent.close()
            await client.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await control.close()


async def test_a_trial_boot_is_reported_installed_then_healthy(tmp_path: Path, helper: Helper) -> None:
    """After the reboot into N+1: installed (on trial) at once, healthy when the slot is marked good."""
    pending = {"version": "0.1.1", "slot": "B", "from_version": "0.1.0", "from_slot": "A"}
    helper.status.write_text(json.dumps({"booted": "B", "version": "0.1.1", "state": {"pending": pending}}))
    (helper.updates / "agent.json").write_text(json.dumps({"target": "0.1.1", "rollout": "r-2"}))
    pki = make_pki(tmp_path / "pki")
    statuses: list[dict[str, object]] = []

    async def on_status(gateway_id: str, message: dict[str, object]) -> dict[str, object]:
        statuses.append(parse_update_status(message).record())
        return update_status_ack()

    async with plane_with_bundles(pki, BundleServer()) as (base, hub):
        hub.register_control(UPDATE_STATUS, on_status)  # type: ignore[attr-defined]
        control = ControlChannel("gateway")
        agent = _agent(pki, tmp_path, helper, control, slot="B", version="0.1.1")
        client = make_client(pki, base, _relay(), control=control, on_state=lambda s, r: agent.on_state(s))
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(agent.run())]
        try:
            trial = await _until(statuses, "installed")
            assert (trial["running"], trial["slot"], trial["target"], trial["rollout"]) == (
                "0.1.1",
                "B",
                "0.1.1",
                "r-2",
            )
            await asyncio.sleep(1.0)  # looked at five times meanwhile: no new report while nothing changed
            assert len(statuses) == 1
            last = {**pending, "result": "installed", "reason": "the gateway is connected to the plane"}
            helper.status.write_text(json.dumps({"booted": "B", "version": "0.1.1", "state": {"last": last}}))
            healthy = await _until(statuses, "healthy", timeout=10)
            assert (healthy["target"], healthy["rollout"], healthy["reason"]) == ("0.1.1", "r-2", None)
        finally:
            await agent.close()
            await client.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await control.close()


@pytest.mark.skipif(not Path(TINYPROXY).exists(), reason="tinyproxy is not installed")
async def test_the_bundle_comes_through_the_configured_proxy(tmp_path: Path, helper: Helper) -> None:
    """The agent dials as the tunnel does: CONNECT through the proxy, credentials from its URL."""
    proc, port, proxy_log = start_tinyproxy(tmp_path, ("gw", "s3cret"))
    pki = make_pki(tmp_path / "pki")
    bundles = BundleServer()
    statuses: list[dict[str, object]] = []

    async def on_status(gateway_id: str, message: dict[str, object]) -> dict[str, object]:
        statuses.append(parse_update_status(message).record())
        return update_status_ack()

    try:
        async with plane_with_bundles(pki, bundles) as (base, hub):
            hub.register_control(UPDATE_STATUS, on_status)  # type: ignore[attr-defined]
            control = ControlChannel("gateway")
            agent = _agent(pki, tmp_path, helper, control, proxy=URL(f"http://gw:s3cret@127.0.0.1:{port}"))
            agent.register()
            client = make_client(
                pki, base, _relay(), control=control, on_state=lambda s, r: agent.on_state(s)
            )
            tasks = [asyncio.create_task(client.run()), asyncio.create_task(agent.run())]
            try:
                await _until(statuses, "rolled-back")
                offer = _offer(base, "0.1.1", install=False, reboot=False)
                hub.control(pki.gateway_id).send(offer.message())  # type: ignore[attr-defined]
                await _until(statuses, "downloaded")
                assert (helper.updates / "0.1.1.raucb").read_bytes() == BUNDLE
                assert helper.recorded() == []  # download only: nothing installed
                assert bundles.requests == [(pki.gateway_id, None)]
                assert f"CONNECT 127.0.0.1:{base.port}" in proxy_log.read_text()
            finally:
                await agent.close()
                await client.stop()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await control.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_an_offer_on_connect_waits_for_the_updaters_record(tmp_path: Path, helper: Helper) -> None:
    """The plane offers right after HELLO, before the agent has read the updater's record (seconds
    under emulation): the release that just rolled back must still not be fetched and installed."""
    helper.status_delay = 1.5
    helper.stop()
    helper.socket_path.unlink()
    helper.procs.clear()
    helper.start()
    (helper.updates / "agent.json").write_text(json.dumps({"target": "0.1.2", "rollout": "r-1"}))
    pki = make_pki(tmp_path / "pki")
    bundles = BundleServer()
    statuses: list[dict[str, object]] = []

    async def on_status(gateway_id: str, message: dict[str, object]) -> dict[str, object]:
        statuses.append(parse_update_status(message).record())
        return update_status_ack()

    async with plane_with_bundles(pki, bundles) as (base, hub):
        hub.register_control(UPDATE_STATUS, on_status)  # type: ignore[attr-defined]
        control = ControlChannel("gateway")
        agent = _agent(pki, tmp_path, helper, control)
        agent.register()
        client = make_client(pki, base, _relay(), control=control, on_state=lambda s, r: agent.on_state(s))
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(agent.run())]
        try:
            async with asyncio.timeout(10):
                while hub.control(pki.gateway_id) is None:  # type: ignore[attr-defined]
                    await asyncio.sleep(0.01)
            offer = _offer(base, "0.1.2", rollout="r-1")
            hub.control(pki.gateway_id).send(offer.message())  # type: ignore[attr-defined]
            assert statuses == []  # the record is still being read
            await _until(statuses, "rolled-back")
            await asyncio.sleep(1.0)
            assert [s["state"] for s in statuses] == ["rolled-back", "rolled-back"]
            assert bundles.requests == [] and helper.recorded() == []
        finally:
            await agent.close()
            await client.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await control.close()
