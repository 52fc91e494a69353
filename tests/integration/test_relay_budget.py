"""One memory budget for buffered bodies across all streams: RESET busy (503 at the plane) when
it is spent, never an OOM kill, and every reservation returned on every path.

Filtered responses used to be buffered up to a rule's max_body_bytes (32-64 MiB) per stream with
no bound across streams, and held twice while joined, under the unit's MemoryMax=256M.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.filter.policy import load_policies
from gateway.relay.budget import MIB, Budget
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostilePlane, request_frames
from tests.integration.tunnel_support import PYTHON, REPO, free_port, make_pki, running_plane, stop_process

pytestmark = pytest.mark.integration

POLICY = """\
kind: http
rules:
  - name: inventory
    path: /big
    json: ["[].id"]
  - name: small
    path: /json/*
    json: ["[].id"]
  - name: soap
    methods: [GET, POST]
    allow_write: true
    path: /sdk
    xml:
      elements:
        - Envelope/Body/RetrievePropertiesExResponse/returnval/objects/obj
        - Envelope/Body/RetrievePropertiesExResponse/returnval/objects/propSet/name
        - Envelope/Body/RetrievePropertiesExResponse/returnval/objects/propSet/val/**
      properties: [name]
"""

BIG = json.dumps([{"id": i, "pad": "x" * 200} for i in range(6 * MIB // 215)]).encode()
# A 6 MiB RetrievePropertiesEx answer of which the policy keeps ~5%: every VM's name, no notes.
_VM = (
    '<objects><obj type="VirtualMachine">vm-{i}</obj><propSet><name>name</name><val>n{i}</val></propSet>'
    "<propSet><name>config.annotation</name><val>CANARY {pad}</val></propSet></objects>"
)
BIG_SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/'
    'envelope/"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>'
    + "".join(_VM.format(i=i, pad="x" * 2000) for i in range(6 * MIB // 2150))
    + "</returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"
).encode()


def target_app() -> web.Application:
    app = web.Application()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/json")

    async def json_kind(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.json_response([{"id": 1, "secret": "CANARY"}])
        if kind == "html":
            return web.Response(text="<html>CANARY</html>", content_type="text/html")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(b"[" + b" " * 1000)
        if kind == "truncated":
            assert request.transport is not None
            request.transport.abort()
            return resp
        await asyncio.sleep(30)  # "slow": the plane gives up first
        return resp

    async def soap(request: web.Request) -> web.Response:
        return web.Response(body=BIG_SOAP, content_type="text/xml")

    app.router.add_get("/big", big)
    app.router.add_get("/sdk", soap)
    app.router.add_get("/json/{kind}", json_kind)
    return app


@pytest.fixture
async def target() -> AsyncIterator[str]:
    runner = web.AppRunner(target_app(), shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def write_policy(tmp_path: Path) -> Path:
    d = tmp_path / "pol"
    d.mkdir(exist_ok=True)
    (d / "t.yaml").write_text(POLICY)
    return d


async def test_the_budget_is_returned_on_every_path(tmp_path: Path, target: str) -> None:
    items = [{"name": "t", "url": target, "allow_private": ["127.0.0.1"]}]
    budget = Budget(1 * MIB)
    relay = Relay(
        parse_targets({"targets": items}, "t"), load_policies([write_policy(tmp_path)]), budget=budget
    )
    try:
        async with HostilePlane(relay) as plane:
            plane.feed(request_frames(1, "GET", "t", "/json/ok"))  # success
            ok = await plane.outcome(1)
            assert ok.status == 200 and b"CANARY" not in ok.body
            assert budget.in_use == 0 and budget.peak > 0
            plane.feed(request_frames(3, "GET", "t", "/json/html"))  # denied by the filter
            assert (await plane.outcome(3)).reset is p.ErrorCode.FILTERED
            assert budget.in_use == 0
            plane.feed(request_frames(5, "GET", "t", "/json/truncated"))  # the target breaks it
            assert (await plane.outcome(5)).reset is p.ErrorCode.TARGET_ERROR
            assert budget.in_use == 0
            plane.feed(request_frames(7, "GET", "t", "/big"))  # over the whole budget: busy
            busy = await plane.outcome(7)
            assert busy.reset is p.ErrorCode.BUSY, busy
            assert budget.in_use == 0 and budget.refused == 1
            plane.feed(request_frames(9, "GET", "t", "/json/slow"))  # the plane cancels mid-buffering
            while budget.in_use == 0:
                await asyncio.sleep(0.01)
            plane.feed(p.encode_reset(9, p.ErrorCode.CANCELLED, "caller went away"))
            for _ in range(200):
                if not relay._tasks:
                    break
                await asyncio.sleep(0.01)
            assert not relay._tasks and budget.in_use == 0
    finally:
        await relay.close()
    assert budget.in_use == 0


async def test_a_streamed_xml_body_holds_its_output_not_its_input(tmp_path: Path, target: str) -> None:
    """6 MiB of SOAP through a 1 MiB budget: filtered as it arrives, the budget holds the piece
    being filtered and the output so far (~0.3 MiB), so it fits; the 6 MiB JSON body, filtered
    buffered, still gets busy."""
    items = [{"name": "t", "url": target, "allow_private": ["127.0.0.1"]}]
    budget = Budget(1 * MIB)
    relay = Relay(
        parse_targets({"targets": items}, "t"), load_policies([write_policy(tmp_path)]), budget=budget
    )
    try:
        async with HostilePlane(relay) as plane:
            plane.feed(request_frames(1, "GET", "t", "/sdk"))
            ok = await plane.outcome(1)
            assert ok.status == 200 and b"CANARY" not in ok.body and b"<val>n1000</val>" in ok.body
            assert len(BIG_SOAP) > 6 * budget.limit and budget.in_use == 0
            assert len(ok.body) <= budget.peak < budget.limit
            plane.feed(request_frames(3, "GET", "t", "/big"))
            assert (await plane.outcome(3)).reset is p.ErrorCode.BUSY
            assert budget.in_use == 0
    finally:
        await relay.close()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def test_concurrent_large_filtered_responses_get_busy_not_oom(tmp_path: Path, target: str) -> None:
    """The real `gateway run`, 12 concurrent 6 MiB filtered responses against a 16 MiB budget."""
    pki = make_pki(tmp_path)
    async with running_plane(pki) as (plane, _hub, _runner):
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  - name: t\n    url: {target}\n    allow_private: [127.0.0.1]\n")
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"plane_url: {plane}\nstate_dir: {pki.state_dir}\ntargets: {targets}\n"
            f"policy_dirs: [{write_policy(tmp_path)}]\nheartbeat_interval: 1\nbuffer_budget_mib: 16\n"
        )
        proc = subprocess.Popen(
            [PYTHON, "-m", "gateway", "run", "--config", str(config)], cwd=REPO, stdin=subprocess.DEVNULL
        )
        try:
            ctx = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
            url = f"{plane}/v1/gateways/{pki.gateway_id}/targets/t/big"
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 15
                while True:  # until the tunnel is up
                    async with http.get(url, ssl=ctx) as r:
                        await r.read()
                        if r.status != 503 or time.monotonic() > deadline:
                            break
                    await asyncio.sleep(0.1)
                assert r.status == 200

                async def one() -> tuple[int, str]:
                    async with http.get(url, ssl=ctx) as r:
                        body = await r.read()
                        return r.status, json.loads(body)["error"] if r.status != 200 else ""

                results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(12))), 60)
            statuses = sorted(results)
            assert (503, "busy") in statuses, statuses
            assert (200, "") in statuses, statuses
            assert set(statuses) <= {(200, ""), (503, "busy")}, statuses
            assert proc.poll() is None  # alive: no OOM, no crash
            # Without a budget this run peaks at ~140 MiB; with 16 MiB of budget at ~60.
            assert vm_hwm_mib(proc.pid) < 100, vm_hwm_mib(proc.pid)  # 59 measured; 140 without a budget
        finally:
            stop_process(proc)
