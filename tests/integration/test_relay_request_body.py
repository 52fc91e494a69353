"""A request body reaches the target however the plane's OPEN and DATA frames are cut into messages.

The protocol lets the plane send OPEN and DATA+FIN in one WebSocket message (the common case
for a small body). The relay once read "the peer has finished sending" as "there is no body"
and sent POST with an empty body: every vSphere SOAP call was refused and logins went out
without their credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.filter.policy import SHIPPED_POLICIES, load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import (
    HostilePlane,
    RecordingTarget,
    TargetRequest,
    ok_response,
    request_frames,
)
from tests.integration.tunnel_support import write_policies

pytestmark = pytest.mark.integration

SOAP_DIR = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "filter" / "vsphere-soap"
PACKAGE_POLICIES = SHIPPED_POLICIES
LOGIN = (SOAP_DIR / "login-request.xml").read_bytes()
LOGIN_RESPONSE = (SOAP_DIR / "login-response.xml").read_bytes()


def soap_target(req: TargetRequest) -> bytes:
    if b"<Login " not in req.body:
        return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
    return ok_response(LOGIN_RESPONSE, "text/xml; charset=utf-8")


@pytest.fixture
async def targets() -> AsyncIterator[tuple[RecordingTarget, RecordingTarget]]:
    async with RecordingTarget().running() as echo, RecordingTarget(soap_target).running() as soap:
        yield echo, soap


def make_relay(tmp_path: Path, echo: RecordingTarget, soap: RecordingTarget) -> Relay:
    items = [
        {"name": "echo", "url": echo.url, "kind": "http", "allow_private": ["127.0.0.1"]},
        {"name": "vc", "url": soap.url, "kind": "vsphere-soap", "allow_private": ["127.0.0.1"]},
    ]
    policies = load_policies([PACKAGE_POLICIES, write_policies(tmp_path)])
    return Relay(parse_targets({"targets": items}, "test"), policies)


async def deliver(plane: HostilePlane, data: bytes, how: str) -> None:
    open_len = p.HEADER_SIZE + int.from_bytes(data[6:10], "big")  # the OPEN frame, header and payload
    if how == "one-message":
        plane.feed(data)
    elif how == "two-messages":
        await plane.feed_paced(data, [open_len])
    elif how == "bytewise":
        plane.feed_bytewise(data)
    else:  # bytewise, with the relay running between every byte
        await plane.feed_paced(data, range(1, len(data)))


HOW = ["one-message", "two-messages", "bytewise", "bytewise-paced"]


@pytest.mark.parametrize("how", HOW)
async def test_post_body_reaches_an_http_target(tmp_path: Path, targets, how: str) -> None:  # type: ignore[no-untyped-def]
    echo, soap = targets
    relay = make_relay(tmp_path, echo, soap)
    body = b"username=svc&password=plane-owned"
    try:
        async with HostilePlane(relay) as plane:
            cl = (("Content-Length", str(len(body))),)  # as the plane sends it
            await deliver(plane, request_frames(1, "POST", "echo", "/login", cl, body), how)
            out = await plane.outcome(1)
    finally:
        await relay.close()
    assert out.reset is None, out.message
    assert out.status == 200 and out.body == body
    (req,) = echo.requests
    assert req.method == "POST" and req.body == body
    assert req.header("content-length") == str(len(body))


@pytest.mark.parametrize("how", HOW)
async def test_soap_call_passes_the_operation_allowlist(tmp_path: Path, targets, how: str) -> None:  # type: ignore[no-untyped-def]
    echo, soap = targets
    relay = make_relay(tmp_path, echo, soap)
    headers = (
        ("Content-Type", "text/xml; charset=utf-8"),
        ("SOAPAction", "urn:vim25/8.0"),
        ("Content-Length", str(len(LOGIN))),
    )
    try:
        async with HostilePlane(relay) as plane:
            await deliver(plane, request_frames(1, "POST", "vc", "/sdk", headers, LOGIN), how)
            out = await plane.outcome(1)
    finally:
        await relay.close()
    assert out.reset is None, out.message
    assert out.status == 200
    assert (out.header("X-Gateway-Filter") or "").startswith("vsphere-soap-sdk;")
    assert b"svc-inventory" in out.body and b"CANARY-SESSION-KEY" not in out.body
    (req,) = soap.requests
    assert req.body == LOGIN


@pytest.mark.parametrize("pieces", [1, 3])
async def test_body_in_several_data_frames_and_an_empty_body(tmp_path: Path, targets, pieces: int) -> None:  # type: ignore[no-untyped-def]
    echo, soap = targets
    relay = make_relay(tmp_path, echo, soap)
    try:
        async with HostilePlane(relay) as plane:
            cl10, cl0 = (("Content-Length", "10"),), (("Content-Length", "0"),)
            plane.feed(request_frames(1, "PUT", "echo", "/a", cl10, b"0123456789", pieces=pieces))
            plane.feed(request_frames(3, "POST", "echo", "/b", cl0, b""))  # OPEN, then DATA+FIN of 0 bytes
            plane.feed(request_frames(5, "GET", "echo", "/c"))  # OPEN+FIN: no body
            a, b, c = [await plane.outcome(sid) for sid in (1, 3, 5)]
    finally:
        await relay.close()
    assert (a.status, a.body, b.status, b.body, c.status) == (200, b"0123456789", 200, b"", 200)
    got = {r.path: r for r in echo.requests}
    assert got["/a"].body == b"0123456789"
    assert got["/b"].header("content-length") == "0"
    assert got["/c"].header("content-length") is None and got["/c"].header("transfer-encoding") is None
