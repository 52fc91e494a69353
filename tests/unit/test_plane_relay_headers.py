"""The plane's header rules for relay calls, on their fast paths, against the general rule."""

from __future__ import annotations

import pytest

from gwcore.httpwire import strip_hop_headers
from mgmtplane.front_wire import response_headers
from mgmtplane.hub import request_head

pytestmark = pytest.mark.unit


def reference_request_headers(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The rule as docs/protocol.md states it, written the slow, obvious way."""
    credentials = {"x-target-authorization": "Authorization", "x-target-cookie": "Cookie"}
    plane_only = {"authorization", "cookie", "x-forwarded-for", "x-real-ip", "expect"}
    out = []
    for key, value in strip_hop_headers(items):
        if key.lower() in credentials:
            out.append((credentials[key.lower()], value))
        elif key.lower() not in plane_only:
            out.append((key, value))
    return out


CASES = [
    [("Host", "plane"), ("Accept", "*/*")],
    [("Authorization", "Bearer admin"), ("X-Target-Authorization", "Basic dA=="), ("X-Foo", "1")],
    [("Cookie", "plane=1"), ("X-Target-Cookie", "vmware_soap_session=abc"), ("Expect", "100-continue")],
    [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("X-A", "a")],
    # Connection names further headers to drop, the credentials' carriers among them.
    [("Connection", "X-Target-Cookie, x-a"), ("X-Target-Cookie", "c"), ("X-A", "a"), ("X-B", "b")],
    [("connection", "close"), ("connection", "X-B"), ("X-B", "b"), ("Transfer-Encoding", "chunked")],
    [("X-Forwarded-For", "10.0.0.1"), ("X-Real-IP", "10.0.0.1"), ("Proxy-Authorization", "x")],
]


@pytest.mark.parametrize("items", CASES)
def test_request_headers_follow_the_general_rule(items: list[tuple[str, str]]) -> None:
    head = request_head("GET", "t", "/v1/gateways/g/targets/t/a?b=%2F", items)
    assert list(head.headers) == reference_request_headers(items)
    assert head.path == "/a?b=%2F"


@pytest.mark.parametrize(
    "headers",
    [
        (("Content-Type", "application/json"), ("Content-Length", "10"), ("Date", "x")),
        (("content-length", "3"), ("Transfer-Encoding", "chunked"), ("Keep-Alive", "1")),
        (("Connection", "X-Secret"), ("X-Secret", "s"), ("X-Ok", "o"), ("date", "d")),
        (),
    ],
)
def test_response_headers_follow_the_general_rule(headers: tuple[tuple[str, str], ...]) -> None:
    out, dated, sized = response_headers(headers)
    assert out == strip_hop_headers(headers)
    assert dated == any(k.lower() == "date" for k, _ in out)
    assert sized == any(k.lower() == "content-length" for k, _ in out)
