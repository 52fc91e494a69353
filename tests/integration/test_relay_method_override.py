"""Method overrides through the relay: query-string and form-body forms are refused before the
target is contacted, whatever the target kind; ordinary forms still go through whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostilePlane, RecordingTarget, request_frames
from tests.integration.tunnel_support import write_policies

pytestmark = pytest.mark.integration

FORM = (("Content-Type", "application/x-www-form-urlencoded"),)


async def test_overrides_are_refused_and_plain_forms_pass(tmp_path: Path) -> None:
    async with RecordingTarget().running() as target:
        items = [{"name": "t", "url": target.url, "allow_private": ["127.0.0.1"]}]
        relay = Relay(parse_targets({"targets": items}, "t"), load_policies([write_policies(tmp_path)]))
        try:
            async with HostilePlane(relay) as plane:
                plane.feed(request_frames(1, "GET", "t", "/small?_method=DELETE"))
                plane.feed(request_frames(3, "GET", "t", "/small?X%2DHTTP%2DMethod%2DOverride=PUT"))
                plane.feed(request_frames(5, "POST", "t", "/login", FORM, b"user=a&_method=DELETE", pieces=2))
                plane.feed(request_frames(7, "POST", "t", "/login", FORM, b"user=a&password=b"))
                outs = [await plane.outcome(sid) for sid in (1, 3, 5, 7)]
        finally:
            await relay.close()
    assert [o.reset for o in outs[:3]] == [p.ErrorCode.FILTERED] * 3, outs
    assert outs[3].status == 200 and outs[3].body == b"user=a&password=b"
    assert [r.path for r in target.requests] == ["/login"]
