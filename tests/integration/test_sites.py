"""Sites end to end: a real plane, two real gateway processes enrolled into one site, nginx targets,
TLS and the tunnel on loopback. Failover when a gateway is killed, routing by reachability and
priority, a planned restart (GOAWAY drain) under load, the CLI and the forward (docs/sites.md).

The figures (calls lost, the failover gap) are printed: run with -s to see them.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration import plane_helpers
from tests.integration.operate_support import free_port, wait_until
from tests.integration.sites_support import SITE, Site, run_load, site

pytestmark = pytest.mark.timeout(240)


def relayed(s: Site, name: str) -> int:
    status, body = s.api(f"/v1/gateways/{s.members[name].gateway_id}")
    assert status == 200, body
    return int((body.get("tunnel") or {}).get("relayed", 0))


def only_mid_body(failed: list[str]) -> bool:
    """Whether every failure is one whose response had started (the body was cut short)."""
    return all(f.startswith("ClientPayloadError") for f in failed)


def _wait_preferred(s: Site, name: str, priority: int) -> None:
    """Until the plane has read a priority set on `name` (it looks once a second). By the priority
    itself, not the order: with equal priorities the view sorts by the random gateway ids, so
    `name` came first by chance half the time, before the change was read."""

    def applied() -> bool:
        first = s.view()["gateways"][0]
        return bool(first["hostname"] == name and first["priority"] == priority)

    wait_until(applied, 10, "the priority applied")


async def test_kill_one_gateway_in_the_middle_of_2000_gets(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        for name in ("gw-a", "gw-b"):
            s.wait_reach(name, "bmc", "yes")
        killed: dict[str, float] = {}

        def kill() -> None:
            killed["at"] = time.monotonic()
            s.members["gw-a"].signal(signal.SIGKILL)

        load = await run_load(s, "bmc", 2000, concurrency=8, on_progress={600: kill})
        gap = load.gap_around(killed["at"])
        print(
            f"\nsites: SIGKILL of one of two gateways during 2000 GETs: {load.ok} ok,"
            f" {len(load.failed)} failed (all mid-body: {only_mid_body(load.failed)}),"
            f" failover gap {gap * 1000:.1f} ms, slowest call {load.slowest * 1000:.0f} ms,"
            f" served by {load.via}; plane: {s.view()['stats']}"
        )
        assert only_mid_body(load.failed), load.failed[:5]
        assert load.ok + len(load.failed) == 2000
        assert load.via.get("gw-a", 0) > 0 and load.via.get("gw-b", 0) > 0
        assert s.members["gw-a"].wait_exit(5) == -signal.SIGKILL

        # After the kill every call goes to gw-b: the plane shows gw-a offline.
        view = {g["hostname"]: g for g in s.view()["gateways"]}
        assert view["gw-a"]["connected"] is False and view["gw-b"]["connected"] is True
        after = await run_load(s, "bmc", 100, concurrency=4)
        assert after.via == {"gw-b": 100} and not after.failed

        # With no gateway left: a clear 503 naming why, for any method.
        s.members["gw-b"].signal(signal.SIGKILL)
        s.members["gw-b"].wait_exit(5)
        wait_until(lambda: not any(g["connected"] for g in s.view()["gateways"]), 10, "both offline")
        for method in ("GET", "POST"):
            status, body = s.api(f"/v1/sites/{SITE}/targets/bmc/redfish/v1", method=method)
            assert status == 503 and body["error"] == "site-unavailable", body
            assert "offline" in body["message"] and "\n" not in body["message"]


async def test_a_frozen_gateway_is_dropped_after_missed_heartbeats(tmp_path: Path) -> None:
    # SIGSTOP: the tunnel's TCP connection stays open, nothing answers. Only the heartbeat tells.
    with site(tmp_path) as s:
        for name in ("gw-a", "gw-b"):
            s.wait_reach(name, "bmc", "yes")
        frozen: dict[str, float] = {}

        def freeze() -> None:
            frozen["at"] = time.monotonic()
            s.members["gw-a"].signal(signal.SIGSTOP)

        load = await run_load(
            s, "bmc", 1000, concurrency=8, on_progress={200: freeze}, pace=0.01, timeout=120
        )
        gap = load.gap_around(frozen["at"])
        stats = s.view()["stats"]
        print(
            f"\nsites: SIGSTOP of one of two gateways during 1000 GETs: {load.ok} ok,"
            f" {len(load.failed)} failed, longest stretch without an answer {gap * 1000:.0f} ms,"
            f" slowest call {load.slowest:.1f} s (the heartbeat verdict),"
            f" served by {load.via}; plane: {stats}"
        )
        assert not load.failed, load.failed[:5]
        # The frozen gateway's calls waited for the heartbeat verdict, then went to gw-b (retried).
        assert stats["retries"] >= 1
        view = {g["hostname"]: g for g in s.view()["gateways"]}
        assert view["gw-a"]["connected"] is False


async def test_a_started_post_is_not_replayed_but_a_get_is(tmp_path: Path) -> None:
    # gw-a preferred, then frozen: a POST and a GET given to it wait for the heartbeat verdict.
    # The GET is retried on gw-b; the POST, which may have had an effect, fails in clear words.
    with site(tmp_path) as s:
        for name in ("gw-a", "gw-b"):
            s.wait_reach(name, "bmc", "yes")
        assert s.cli("site", "set-priority", SITE, "gw-a", "10").returncode == 0
        _wait_preferred(s, "gw-a", 10)
        s.members["gw-a"].signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        post = loop.run_in_executor(None, lambda: s.api(f"/v1/sites/{SITE}/targets/bmc/x", method="POST"))
        await asyncio.sleep(0.2)  # the POST first: both go to the frozen gw-a
        get = loop.run_in_executor(None, lambda: s.api(f"/v1/sites/{SITE}/targets/bmc/redfish/v1"))
        (post_status, post_body), (get_status, get_body) = await asyncio.gather(post, get)
        print(
            f"\nsites: frozen preferred gateway: POST {post_status} {post_body.get('error')},"
            f" GET {get_status} via {get_body.get('Name')}, after {time.monotonic() - began:.1f} s"
        )
        assert post_status == 504 and post_body["error"] == "heartbeat-timeout", post_body
        assert s.members["gw-a"].gateway_id in post_body["message"]
        assert get_status == 200 and get_body["Name"] == "gw-b"
        assert s.view()["stats"]["retries"] == 1


async def test_a_target_reachable_from_one_gateway_only(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        s.wait_reach("gw-a", "only-a", "yes")
        s.wait_reach("gw-b", "only-a", "no")  # its probe: connection refused
        # Even with the higher priority, gw-b gets no call for a target it cannot reach.
        done = s.cli("site", "set-priority", SITE, "gw-b", "50")
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: {g["hostname"]: g["priority"] for g in s.view()["gateways"]}["gw-b"] == 50, 10, "priority"
        )
        before = relayed(s, "gw-a"), relayed(s, "gw-b")
        load = await run_load(s, "only-a", 300, concurrency=4)
        after = relayed(s, "gw-a"), relayed(s, "gw-b")
        print(
            f"\nsites: target reachable from gw-a only: {load.ok} ok, {len(load.failed)} failed;"
            f" gw-a relayed {after[0] - before[0]}, gw-b {after[1] - before[1]}"
        )
        assert load.ok == 300 and not load.failed
        assert after[1] - before[1] == 0
        assert after[0] - before[0] >= 300  # and the health probes' own calls are not relayed


async def test_priority_holds_and_returns(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        for name in ("gw-a", "gw-b"):
            s.wait_reach(name, "bmc", "yes")
        done = s.cli("site", "set-priority", SITE, "gw-b", "10")
        assert done.returncode == 0, done.stderr
        assert "priority 10" in done.stdout
        _wait_preferred(s, "gw-b", 10)

        first = await run_load(s, "bmc", 300, concurrency=8)
        assert first.via == {"gw-b": 300}, first.via  # under load too: priority before open streams

        s.members["gw-b"].signal(signal.SIGKILL)
        s.members["gw-b"].wait_exit(5)
        meanwhile = await run_load(s, "bmc", 200, concurrency=8)
        assert meanwhile.via == {"gw-a": 200} and not meanwhile.failed

        s.members["gw-b"].start()
        started = time.monotonic()
        s.wait_connected("gw-b")
        back = await run_load(s, "bmc", 300, concurrency=8)
        print(
            f"\nsites: priority: {first.via} while gw-b (priority 10) ran, {meanwhile.via} while it was"
            f" down, {back.via} after it returned ({time.monotonic() - started:.1f} s from its start)"
        )
        assert back.via == {"gw-b": 300} and not back.failed

        # 'default' clears it: the two share the load again (fewer open streams first).
        assert s.cli("site", "set-priority", SITE, "gw-b", "default").returncode == 0
        wait_until(lambda: all(g["priority"] == 0 for g in s.view()["gateways"]), 10, "the priority cleared")
        shared = await run_load(s, "bmc", 400, concurrency=8)
        assert set(shared.via) == {"gw-a", "gw-b"}, shared.via


async def test_planned_restarts_under_load_lose_no_call(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        for name in ("gw-a", "gw-b"):
            s.wait_reach(name, "bmc", "yes")
        drains: list[tuple[str, float, int]] = []
        ended: list[float] = []

        def restart(name: str, other: str) -> Any:
            def go() -> None:
                s.wait_connected(other)  # one gateway at a time, as an update rollout would
                member = s.members[name]
                began = time.monotonic()
                member.signal(signal.SIGTERM)  # the gateway sends GOAWAY and drains its calls
                code = member.wait_exit(20)
                drains.append((name, time.monotonic() - began, code))
                ended.append(time.monotonic())
                member.start()

            return go

        load = await run_load(
            s,
            "bmc",
            4000,
            concurrency=8,
            on_progress={500: restart("gw-a", "gw-b"), 2200: restart("gw-b", "gw-a")},
            pace=0.004,
        )
        print(
            f"\nsites: two planned restarts (SIGTERM, GOAWAY drain) during 4000 GETs: {load.ok} ok,"
            f" {len(load.failed)} failed; drains {[(n, round(t, 2), c) for n, t, c in drains]};"
            f" served by {load.via}; plane: {s.view()['stats']}"
        )
        assert [d[0] for d in drains] == ["gw-a", "gw-b"] and all(d[2] == 0 for d in drains)
        assert load.failed == []
        assert load.ok == 4000
        assert sum(1 for t in load.done_at if t > ended[-1]) > 100  # the load outlasted the restarts


def test_cli_api_and_forward(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        bad = s.cli("token", "create", "--site", "Bad_Site")
        assert bad.returncode == 1 and bad.stderr.startswith(
            "error: --site: 'Bad_Site' is not a valid site name"
        )
        assert len(bad.stderr.strip().splitlines()) <= 2 and "Traceback" not in bad.stderr  # error + hint

        plain = s.cli("token", "create", "--ttl", "10m")
        assert plain.returncode == 0
        listed = s.cli("token", "list")
        assert f"site {SITE}" in listed.stdout

        wrong = s.cli("site", "set-priority", "dc2", "gw-a", "5")
        assert wrong.returncode == 1 and f"is in site '{SITE}', not in site 'dc2'" in wrong.stderr
        nan = s.cli("site", "set-priority", SITE, "gw-a", "high")
        assert nan.returncode == 1 and "PRIORITY: expected an integer" in nan.stderr

        s.wait_reach("gw-b", "only-a", "no")
        shown = s.cli("site", "show", SITE)
        assert shown.returncode == 0, shown.stderr
        assert "gw-a" in shown.stdout and "gw-b" in shown.stdout
        assert "target only-a: " in shown.stdout and " no" in shown.stdout
        assert s.cli("site", "list").stdout.strip() == f"{SITE}  2 gateways"

        # The admin token guards the site routes, the relay route included.
        s.token, token = "wrong", s.token
        assert s.api("/v1/sites")[0] == 401
        assert s.api(f"/v1/sites/{SITE}/targets/bmc/redfish/v1")[0] == 401
        s.token = token
        status, body = s.api("/v1/sites")
        assert status == 200 and body == {"sites": [{"site": SITE, "gateways": 2, "connected": 2}]}
        status, body = s.api("/v1/sites/nowhere/targets/bmc/redfish/v1")
        assert status == 404 and body["error"] == "site-unknown"

        # Site calls take the public listener's lean path (aiohttp would add its Server header).
        ctx = ssl.create_default_context(cafile=str(s.plane.state_dir / "ca.pem"))
        for path, want in (
            (f"/v1/sites/{SITE}/targets/bmc/redfish/v1", 200),
            ("/v1/sites/nowhere/targets/x/", 404),
        ):
            req = urllib.request.Request(s.plane.url + path, headers={"Authorization": f"Bearer {s.token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                    status, server = resp.status, resp.headers.get("Server", "")
            except urllib.error.HTTPError as exc:
                with exc:
                    status, server = exc.code, exc.headers.get("Server", "")
            assert status == want and "aiohttp" not in server, (path, status, server)

        # The per-gateway route is unchanged.
        gw = s.members["gw-a"].gateway_id
        status, body = s.api(f"/v1/gateways/{gw}/targets/bmc/redfish/v1")
        assert status == 200 and body["Name"] == "gw-a"

        # `mgmtplane forward site:dc1 bmc`: an SDK's base URL that fails over.
        port = free_port()
        argv = ["forward", f"site:{SITE}", "bmc", "--listen", f"127.0.0.1:{port}"]
        fwd = subprocess.Popen(
            [sys.executable, "-m", "mgmtplane", *argv, "--state-dir", str(s.plane.state_dir)],
            env=plane_helpers._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert fwd.stdout is not None
            ready, _, _ = select.select([fwd.stdout], [], [], 30)
            assert ready, "forward did not start"
            assert f"-> site {SITE} target bmc" in fwd.stdout.readline()
            url = f"http://127.0.0.1:{port}/redfish/v1"
            with urllib.request.urlopen(url, timeout=30) as resp:
                assert resp.status == 200 and json.loads(resp.read())["Name"] in ("gw-a", "gw-b")
            s.members["gw-a"].signal(signal.SIGKILL)
            s.members["gw-a"].wait_exit(5)
            for _ in range(5):  # the same base URL keeps answering, now through gw-b
                with urllib.request.urlopen(url, timeout=30) as resp:
                    assert json.loads(resp.read())["Name"] == "gw-b"
        finally:
            fwd.send_signal(signal.SIGTERM)
            fwd.wait(timeout=10)
            assert fwd.stdout is not None
            fwd.stdout.close()
