"""The plane's side of rollouts, end to end on loopback: `mgmtplane serve` as a real process,
real RAUC bundles signed by the build's own code, real registrations and client certificates.

- `release add` with a real signed bundle, and its refusals (another key, another product, garbage);
- the bundle route over mTLS with a gateway's certificate: Range resumes, no certificate and a
  revoked one are refused;
- a rollout driven through real tunnel clients (gateway.tunnel.TunnelClient with a ControlChannel)
  that answer like an update agent: offers, canary order, max_parallel, halt and resume.
The gateway's own update agent against this plane is the gateway side's test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from appliance.bundle import make_bundle
from appliance.signing import Signer, generate_signer
from gateway.tunnel.backoff import Backoff
from gateway.tunnel.client import TunnelClient, client_ssl_context
from gwcore import protocol as p
from gwcore import update as um
from gwcore.control import ControlChannel, ControlError, Message
from mgmtplane.rollout_plan import WEEKDAYS
from tests.integration import plane_helpers
from tests.integration.tunnel_support import make_relay

pytestmark = [
    pytest.mark.skipif(shutil.which("rauc") is None, reason="rauc: run 'make setup'"),
    pytest.mark.timeout(180),
]


@dataclass(frozen=True)
class Bundles:
    keyring: Path
    good: Path  # 0.2.0 for "gateway", vendor key
    other_key: Path
    other_product: Path
    garbage: Path
    good_again: Path  # 0.2.0 again, other bytes (a new signature)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    base = tmp_path_factory.mktemp("bundles")
    vendor, other = (
        generate_signer(base / "vendor", "Vendor"),
        generate_signer(base / "other", "Someone else"),
    )
    tree = base / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text('IMAGE_VERSION="0.2.0"\n')
    (tree / "payload").write_bytes(os.urandom(512 * 1024))  # a small image: this is about the plane
    rootfs = base / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(rootfs), "16M"], check=True)

    def bundle(name: str, signer: Signer, compatible: str = "gateway") -> Path:
        return make_bundle(rootfs, base / name, compatible=compatible, version="0.2.0", signer=signer)

    garbage = base / "garbage.raucb"
    garbage.write_bytes(os.urandom(64 * 1024))
    return Bundles(
        keyring=vendor.keyring,
        good=bundle("good.raucb", vendor),
        other_key=bundle("other-key.raucb", other),
        other_product=bundle("toaster.raucb", vendor, "toaster"),
        garbage=garbage,
        good_again=bundle("good-again.raucb", vendor),
    )


def mgmtplane(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return plane_helpers.run("mgmtplane", *args, "--state-dir", str(state_dir))


def add(state_dir: Path, bundle: Path, keyring: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return mgmtplane(state_dir, "release", "add", str(bundle), "--keyring", str(keyring), *extra)


def test_release_add_verifies_the_signed_manifest_and_refuses_the_rest(
    tmp_path: Path, bundles: Bundles
) -> None:
    state = tmp_path / "plane"
    for bundle, words in [
        (
            bundles.other_key,
            "refused: signature verification failed: Verify error: unable to get local issuer",
        ),
        (bundles.other_product, "refused: the bundle is for 'toaster', this plane's product is 'gateway'"),
        (bundles.garbage, "refused: Invalid bundle format"),
        (tmp_path / "missing.raucb", "missing.raucb: not a file"),
    ]:
        done = add(state, bundle, bundles.keyring)
        assert done.returncode == 1, done.stdout
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bundle}: ") and words in lines[0], (
            done.stderr
        )
    assert not list((state / "releases").iterdir())  # nothing half-stored
    assert not (state / "releases.json").exists()

    done = add(state, bundles.good, bundles.keyring, "--urgent")
    assert done.returncode == 0, done.stderr
    data = bundles.good.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    release = json.loads((state / "releases.json").read_text())["releases"]["0.2.0"]
    assert release["sha256"] == sha and release["size"] == len(data) and release["urgent"] is True
    assert release["compatible"] == "gateway" and release["downgrade"] is False and release["added_at"]
    assert (state / "releases/0.2.0.raucb").read_bytes() == data
    assert add(state, bundles.good, bundles.keyring).returncode == 0  # the same bytes again: fine
    again = add(state, bundles.good_again, bundles.keyring)
    assert again.returncode == 1 and "release 0.2.0 exists with other bytes" in again.stderr
    listing = mgmtplane(state, "release", "list")
    assert listing.returncode == 0 and sha in listing.stdout and "0.2.0" in listing.stdout

    # A release an unfinished rollout targets stays; then it goes, bundle and all.
    assert mgmtplane(state, "rollout", "start", "0.2.0").returncode == 0
    busy = mgmtplane(state, "release", "remove", "0.2.0")
    assert busy.returncode == 1 and "is the target of rollout r-" in busy.stderr
    assert mgmtplane(state, "rollout", "halt").returncode == 0
    assert mgmtplane(state, "release", "remove", "0.2.0").returncode == 1  # halted is not finished
    raw = json.loads((state / "rollouts.json").read_text())
    raw["current"]["phase"] = "done"
    (state / "rollouts.json").write_text(json.dumps(raw))
    gone = mgmtplane(state, "release", "remove", "0.2.0")
    assert gone.returncode == 0, gone.stderr
    assert not (state / "releases/0.2.0.raucb").exists()
    assert mgmtplane(state, "rollout", "start", "0.2.0").stderr.startswith("error: no release 0.2.0")


def register(plane: plane_helpers.Plane, state: Path) -> str:
    return register_with(plane.token(), state)


async def test_the_bundle_route_serves_admitted_gateways_and_resumes(
    tmp_path: Path, bundles: Bundles
) -> None:
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        assert add(plane.state_dir, bundles.good, bundles.keyring).returncode == 0
        gw_state = tmp_path / "gw"
        gid = register(plane, gw_state)
        data = bundles.good.read_bytes()
        url = f"{plane.url}/v1/releases/0.2.0/bundle"
        anonymous = ssl.create_default_context(cafile=str(plane.state_dir / "ca.pem"))
        async with aiohttp.ClientSession() as http:

            async def get(ctx: ssl.SSLContext, **headers: str) -> tuple[int, bytes, Any]:
                async with http.get(url, ssl=ctx, headers=headers) as r:
                    return r.status, await r.read(), r.headers

            status, body, headers = await get(client_ssl_context(gw_state))
            assert status == 200 and body == data
            assert headers["X-Release-Sha256"] == hashlib.sha256(data).hexdigest()
            cut = len(data) // 3
            status, body, headers = await get(client_ssl_context(gw_state), Range=f"bytes={cut}-")
            assert status == 206 and body == data[cut:]
            assert headers["Content-Range"] == f"bytes {cut}-{len(data) - 1}/{len(data)}"
            status, body, _ = await get(anonymous)
            assert status == 401 and json.loads(body)["error"] == "unauthorized"
            status, body, _ = await get(anonymous, Authorization=f"Bearer {plane.admin_token()}")
            assert status == 200 and body == data
            status, body, _ = await get(anonymous, Authorization="Bearer wrong")
            assert status == 401
            async with http.get(
                f"{plane.url}/v1/releases/0.9.9/bundle", ssl=client_ssl_context(gw_state)
            ) as r:
                assert r.status == 404
            async with http.get(
                f"{plane.url}/v1/releases/..%2Fgateways.json/bundle",
                ssl=anonymous,
                headers={"Authorization": f"Bearer {plane.admin_token()}"},
            ) as r:
                assert r.status == 404
            assert mgmtplane(plane.state_dir, "gateway", "revoke", gid).returncode == 0
            status, body, _ = await get(client_ssl_context(gw_state))
            assert status == 403 and json.loads(body)["error"] == "gateway-revoked"
        await plane_helpers.wait_sockets_closed(plane.port)


# --- a rollout through real tunnels ---------------------------------------------------------------


@dataclass
class Agent:
    """A registered gateway on a real tunnel whose ControlChannel answers like an update agent."""

    gid: str
    state: Path
    running: str = "0.1.0"
    offers: list[um.UpdateOffer] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)  # control message types in order, "up" per tunnel
    control: ControlChannel = field(default_factory=lambda: ControlChannel("test-agent"))
    client: TunnelClient | None = None
    task: asyncio.Task[None] | None = None

    async def start(self, plane_url: str, tmp_path: Path) -> None:
        async def on_offer(message: Message) -> None:
            self.heard.append(um.UPDATE_OFFER)
            self.offers.append(um.parse_update_offer(message))

        async def on_ca_update(message: Message) -> None:
            self.heard.append("ca-update")

        self.control.register(um.UPDATE_OFFER, on_offer)
        self.control.register("ca-update", on_ca_update)
        self.heard.append("up")
        self.client = TunnelClient(
            URL(plane_url),
            client_ssl_context(self.state),
            make_relay(tmp_path, {}).on_open,
            limits=p.Limits(heartbeat_ms=1000),
            backoff=Backoff(0.05, 0.3),
            control=self.control,
        )
        self.task = asyncio.create_task(self.client.run())
        await until(lambda: self.control.ready, f"{self.gid} connected")
        await self.report("idle", target=None, rollout=None)

    async def report(
        self, state: str, *, target: str | None = "0.2.0", rollout: str | None = "", **kw: Any
    ) -> None:
        rid = self.offers[-1].rollout if rollout == "" else rollout
        status = um.UpdateStatus(
            self.running,
            "A" if self.running == "0.1.0" else "B",
            target,
            rid,
            um.UpdateState(state),
            kw.get("progress"),
            kw.get("reason"),
            time.time(),
        )
        reply = await self.control.request(status.message(), timeout=10)
        assert reply["type"] == um.UPDATE_STATUS_ACK

    async def update(self) -> None:
        """Download, install, reboot and come back healthy on the target, reporting each step."""
        for state in ("downloading", "downloaded", "installing", "installed", "rebooting"):
            await self.report(state, progress=0.5 if state == "downloading" else None)
        self.running = "0.2.0"
        await self.report("healthy")

    async def stop(self) -> None:
        if self.client is not None and self.task is not None:
            await self.client.stop(0.5)
            await asyncio.wait_for(self.task, 10)

    def installs(self) -> list[um.UpdateOffer]:
        return [o for o in self.offers if o.install]


async def until(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def cli(state_dir: Path, *args: str) -> str:
    done = await asyncio.to_thread(mgmtplane, state_dir, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
async def fleet(tmp_path: Path, bundles: Bundles) -> AsyncIterator[tuple[plane_helpers.Plane, list[Agent]]]:
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        assert add(plane.state_dir, bundles.good, bundles.keyring).returncode == 0
        agents = [Agent(register(plane, tmp_path / f"gw{i}"), tmp_path / f"gw{i}") for i in range(3)]
        try:
            for agent in agents:
                await agent.start(plane.url, tmp_path)
            yield plane, agents
        finally:
            for agent in agents:
                await agent.stop()
            await plane_helpers.wait_sockets_closed(plane.port)


async def quiet(check: Callable[[], Awaitable[None] | None], seconds: float = 3.0) -> None:
    """Let the plane plan for a while (it re-plans every 2 s), then check nothing happened."""
    await asyncio.sleep(seconds)
    result = check()
    if result is not None:
        await result


async def test_a_rollout_goes_canary_first_one_at_a_time_and_halts_on_a_rollback(
    fleet: tuple[plane_helpers.Plane, list[Agent]], tmp_path: Path
) -> None:
    plane, (a, b, canary) = fleet
    state = plane.state_dir
    # A malformed status is refused naming the field, and changes nothing.
    bad = {
        **um.UpdateStatus("0.1.0", "A", None, None, um.UpdateState.IDLE, None, None, 1.0).message(),
        "slot": "Z",
    }
    with pytest.raises(ControlError) as refused:
        await a.control.request(bad, timeout=10)
    assert refused.value.code == "bad-request" and "update-status: slot must be A, B or unknown" in str(
        refused.value
    )
    await cli(state, "rollout", "start", "0.2.0", "--canary", canary.gid, "--max-parallel", "1")
    await until(lambda: canary.installs(), "the canary's install offer")
    offer = canary.offers[-1]
    assert (offer.version, offer.install, offer.reboot, offer.downgrade) == ("0.2.0", True, True, False)
    assert (
        offer.url == f"{plane.url}/v1/releases/0.2.0/bundle"
        and offer.size == (state / "releases/0.2.0.raucb").stat().st_size
    )
    await quiet(lambda: None, 2.5)
    assert a.offers == [] and b.offers == []  # not even a download while the canary is out
    # A new tunnel hears the offer again, after the CA set.
    await canary.stop()
    await canary.start(plane.url, tmp_path)
    await until(lambda: len(canary.offers) == 2, "the offer on the new tunnel")
    assert canary.heard == ["up", "ca-update", "update-offer", "up", "ca-update", "update-offer"]
    assert canary.offers[1] == offer

    await canary.update()
    await until(lambda: a.offers and b.offers, "offers to the others after the canary")
    await until(lambda: len(a.installs()) + len(b.installs()) >= 1, "one install offer")
    await quiet(lambda: None, 2.5)
    first, second = (a, b) if a.installs() else (b, a)
    assert len(second.installs()) == 0 and second.offers[-1].install is False  # max_parallel 1: download only

    # The admitted one rolls back: the rollout halts, the other never gets to install.
    await first.report("installing")
    await first.report("rolled-back", reason="did not finish booting")
    await until(
        lambda: "halted" in json.loads((state / "rollouts.json").read_text())["current"]["phase"], "halt"
    )
    status = await cli(state, "rollout", "status")
    assert f"phase halted: gateway {first.gid} rolled-back: did not finish booting" in status, status
    assert f"{canary.gid}  done*" in status and f"{first.gid}  failed" in status
    async with aiohttp.ClientSession() as http:
        ctx = ssl.create_default_context(cafile=str(state / "ca.pem"))
        headers = {"Authorization": f"Bearer {plane.admin_token()}"}
        async with http.get(f"{plane.url}/v1/gateways/{first.gid}", ssl=ctx, headers=headers) as r:
            update = (await r.json())["update"]
    assert update["state"] == "rolled-back" and update["reason"] == "did not finish booting"
    assert update["running"] == "0.1.0" and update["slot"] == "A" and update["target"] == "0.2.0"
    listing = await cli(state, "gateways")
    line = next(ln for ln in listing.splitlines() if ln.startswith(first.gid))
    assert "0.1.0/A" in line and "rolled-back -> 0.2.0" in line, listing
    await quiet(lambda: None, 2.5)
    assert not second.installs()

    # Resume: the failed gateway tries again (the same offer is sent again), and then the other.
    installs_before = len(first.installs())
    await cli(state, "rollout", "resume")
    await until(lambda: len(first.installs()) > installs_before, "the retry's offer")
    await first.update()
    await until(lambda: second.installs(), "the last gateway's turn")
    await second.update()
    await until(
        lambda: json.loads((state / "rollouts.json").read_text())["current"]["phase"] == "done", "done"
    )
    # A new tunnel hears nothing more once a gateway runs the target.
    assert all(o.rollout == offer.rollout for g in (a, b, canary) for o in g.offers)


async def test_outside_the_window_gateways_only_download_and_urgent_skips_it(
    fleet: tuple[plane_helpers.Plane, list[Agent]],
) -> None:
    plane, agents = fleet
    state = plane.state_dir
    closed_day = WEEKDAYS[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]  # neither today nor yesterday
    out = await cli(
        state,
        "rollout",
        "start",
        "0.2.0",
        "--max-parallel",
        "3",
        "--window",
        f"*=UTC,{closed_day},00:00-00:00",
    )
    assert f"window *: UTC,{closed_day},00:00-00:00" in out
    await until(lambda: all(g.offers for g in agents), "download-only offers")
    assert all(not o.install and not o.reboot for g in agents for o in g.offers)
    status = await cli(state, "rollout", "status")
    assert status.count("waiting-window") == 3, status
    # A second rollout replaces the first; urgent ignores the window.
    await cli(
        state,
        "rollout",
        "start",
        "0.2.0",
        "--max-parallel",
        "3",
        "--urgent",
        "--window",
        f"*=UTC,{closed_day},00:00-00:00",
    )
    await until(lambda: all(g.installs() for g in agents), "urgent install offers")
    first, second = agents[0].offers[0].rollout, agents[0].installs()[0].rollout
    assert first != second and agents[0].installs()[0].urgent and agents[0].installs()[0].reboot
    history = json.loads((state / "rollouts.json").read_text())["history"]
    assert history[0]["id"] == first and history[0]["phase"] == "superseded"


def test_rollout_start_names_what_is_wrong(tmp_path: Path, bundles: Bundles) -> None:
    state = tmp_path / "plane"
    assert add(state, bundles.good, bundles.keyring).returncode == 0
    for args, words in [
        (("0.3.0",), "error: no release 0.3.0"),
        (("0.2.0", "--canary", "nobody"), "error: --canary: no registered gateway nobody"),
        (("0.2.0", "--gateways", "x,y"), "error: --gateways: no registered gateway x, y"),
        (("0.2.0", "--max-parallel", "0"), "error: --max-parallel: expected at least 1"),
        (("0.2.0", "--window", "lab=Mars/Olympus,Mon,01:00-02:00"), "unknown time zone 'Mars/Olympus'"),
        (("0.2.0", "--window", "lab=UTC,Mon,1-2"), "'1' is not a time of day HH:MM"),
    ]:
        done = mgmtplane(state, "rollout", "start", *args)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert words in done.stderr, done.stderr
    assert not (state / "rollouts.json").exists()
    assert mgmtplane(state, "rollout", "halt").stderr.startswith("error: no rollout")
    # Without a running plane, status says so and shows the stored state.
    assert mgmtplane(state, "rollout", "start", "0.2.0").returncode == 0
    status = mgmtplane(state, "rollout", "status")
    assert (
        status.returncode == 0
        and "no live state" in status.stderr
        and ": 0.2.0  phase running" in status.stdout
    )


async def test_a_site_rollout_reaches_only_the_gateways_enrolled_into_the_site(
    tmp_path: Path, bundles: Bundles
) -> None:
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        state = plane.state_dir
        assert add(state, bundles.good, bundles.keyring).returncode == 0
        token = await cli(state, "token", "create", "--site", "lab")
        lab = Agent(register_with(token.strip(), tmp_path / "lab"), tmp_path / "lab")
        other = Agent(register(plane, tmp_path / "other"), tmp_path / "other")
        assert json.loads((state / "gateways.json").read_text())["gateways"][lab.gid]["site"] == "lab"
        try:
            for agent in (lab, other):
                await agent.start(plane.url, tmp_path)
            await cli(
                state,
                "rollout",
                "start",
                "0.2.0",
                "--site",
                "lab",
                "--window",
                "lab=Pacific/Auckland,*,00:00-00:00",
            )
            await until(lambda: lab.installs(), "the lab gateway's offer")
            await quiet(lambda: None, 2.5)
            assert other.offers == []
            status = await cli(state, "rollout", "status")
            assert lab.gid in status and other.gid not in status
        finally:
            for agent in (lab, other):
                await agent.stop()
            await plane_helpers.wait_sockets_closed(plane.port)


def register_with(token: str, state: Path) -> str:
    done = plane_helpers.register(token, state)
    assert done.returncode == 0, done.stderr
    return str(json.loads((state / "identity.json").read_text())["gateway_id"])
