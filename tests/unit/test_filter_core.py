"""Core behaviour of the metadata filter over a small inline policy: matching, JSON filtering, denials."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path

import pytest

from gateway.filter.metadata_filter import (
    Allowed,
    Denied,
    FilterRequest,
    FilterResponse,
    check_request,
    filter_response,
    header_value,
)
from gateway.filter.policy import PolicySet, Rule, load_policies

POLICY = """\
kind: openstack-nova
defaults:
  headers: [x-openstack-request-id]
errors:
  json:
    - "*.message"
    - "*.code"
rules:
  - name: nova-console
    deny: true
    methods: ["*"]
    path: /v2.1/servers/*/remote-consoles
    reason: console access never leaves
  - name: nova-servers
    path: /v2.1/servers/detail
    query: [limit, marker]
    json:
      - servers[].id
      - servers[].name
      - "servers[].addresses.*[].addr"
      - servers[].metadata.**
  - name: nova-server
    path: /v2.1/servers/{id}
    json:
      - server.id
  - name: nova-action
    methods: [POST]
    allow_write: true
    path: /v2.1/servers/*/action
"""


@pytest.fixture
def policies(tmp_path: Path) -> PolicySet:
    (tmp_path / "nova.yaml").write_text(textwrap.dedent(POLICY))
    return load_policies([tmp_path])


def _get(path: str, method: str = "GET") -> FilterRequest:
    return FilterRequest(method, path, {})


def _json(status: int, doc: object, **headers: str) -> FilterResponse:
    return FilterResponse(status, {"Content-Type": "application/json", **headers}, json.dumps(doc).encode())


SERVERS = {
    "servers": [
        {
            "id": "a1",
            "name": "web",
            "user_data": "CANARY-USERDATA",
            "adminPass": "CANARY-PASS",
            "addresses": {"net": [{"addr": "10.0.0.1", "mac": "CANARY-MAC"}]},
            "metadata": {"role": {"tier": 1}},
        }
    ],
    "servers_links": [{"href": "CANARY-LINK"}],
}


def test_filters_json_to_allowed_paths(policies: PolicySet) -> None:
    req = _get("/v2.1/servers/detail?limit=5")
    rule = check_request(policies, "openstack-nova", req)
    assert isinstance(rule, Rule) and rule.name == "nova-servers" and not rule.passthrough
    resp = _json(200, SERVERS, **{"X-OpenStack-Request-ID": "req-1", "Set-Cookie": "CANARY-COOKIE"})
    out = filter_response(policies, "openstack-nova", req, resp)
    assert isinstance(out, Allowed)
    assert json.loads(out.body) == {
        "servers": [
            {
                "id": "a1",
                "name": "web",
                "addresses": {"net": [{"addr": "10.0.0.1"}]},
                "metadata": {"role": {"tier": 1}},
            }
        ]
    }
    assert b"CANARY" not in out.body and "CANARY-COOKIE" not in out.headers.values()
    assert out.headers["x-openstack-request-id"] == "req-1"
    assert out.headers["content-length"] == str(len(out.body))
    assert out.removed == 4 and out.kept == 4
    assert header_value(out) == "nova-servers; removed=4"


@pytest.mark.parametrize(
    ("method", "path", "reason"),
    [
        ("GET", "/v2.1/flavors", "no rule allows"),
        ("POST", "/v2.1/servers/detail", "no rule allows"),
        ("POST", "/v2.1/servers/x/remote-consoles", "console access never leaves"),
        ("GET", "/V2.1/SERVERS/x/Remote-Consoles", "console access never leaves"),
        ("GET", "/v2.1/servers/%2e%2e/detail", "dot"),
        ("GET", "/v2.1/servers/a%2Fb", "encoded-separator"),
        ("GET", "/v2.1/servers//detail", "empty"),
        ("GET", "/v2.1/servers/x;y", "interpret"),
        ("GET", "/v2.1/servers/detail?all_tenants=1", "query parameter 'all_tenants'"),
        ("TRACE", "/v2.1/servers/detail", "method"),
        ("GET", "v2.1/servers/detail", "start with"),
    ],
)
def test_denied_requests(policies: PolicySet, method: str, path: str, reason: str) -> None:
    out = check_request(policies, "openstack-nova", _get(path, method))
    assert isinstance(out, Denied) and reason in out.reason


def test_unknown_kind_is_denied(policies: PolicySet) -> None:
    assert isinstance(check_request(policies, "nope", _get("/v2.1/servers/detail")), Denied)
    assert isinstance(check_request(policies, "openstack-glance", _get("/v2.1/servers/detail")), Denied)


def test_upgrade_is_denied(policies: PolicySet) -> None:
    req = FilterRequest("GET", "/v2.1/servers/detail", {"Upgrade": "websocket"})
    assert isinstance(check_request(policies, "openstack-nova", req), Denied)


def test_method_override_is_denied(policies: PolicySet) -> None:
    req = FilterRequest("GET", "/v2.1/servers/detail", {"X-HTTP-Method-Override": "DELETE"})
    assert isinstance(check_request(policies, "openstack-nova", req), Denied)


def test_duplicate_content_headers_are_denied(policies: PolicySet) -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict([("Content-Type", "application/json"), ("Content-Encoding", "identity")])
    headers.add("content-encoding", "gzip")
    resp = FilterResponse(200, headers, b'{"server": {"id": "a1"}}')
    out = filter_response(policies, "openstack-nova", _get("/v2.1/servers/a1"), resp)
    assert isinstance(out, Denied) and "more than one content-encoding" in out.reason
    single = CIMultiDict([("Content-Type", "application/json"), ("Set-Cookie", "a"), ("Set-Cookie", "b")])
    out = filter_response(
        policies, "openstack-nova", _get("/v2.1/servers/a1"), FilterResponse(200, single, b"{}")
    )
    assert isinstance(out, Allowed)


def test_explicit_write_rule_allows_post_without_body(policies: PolicySet) -> None:
    req = _get("/v2.1/servers/a1/action", "POST")
    assert isinstance(check_request(policies, "openstack-nova", req), Rule)
    out = filter_response(policies, "openstack-nova", req, FilterResponse(202, {}, b""))
    assert isinstance(out, Allowed) and out.body == b""
    leaky = _json(200, {"adminPass": "CANARY"})
    assert isinstance(filter_response(policies, "openstack-nova", req, leaky), Denied)


def test_error_bodies_keep_only_error_fields(policies: PolicySet) -> None:
    req = _get("/v2.1/servers/zzz")
    err = {"itemNotFound": {"message": "Instance zzz could not be found.", "code": 404, "trace": "CANARY"}}
    out = filter_response(policies, "openstack-nova", req, _json(404, err))
    assert isinstance(out, Allowed) and out.status == 404
    assert json.loads(out.body) == {
        "itemNotFound": {"message": "Instance zzz could not be found.", "code": 404}
    }
    html = FilterResponse(500, {"content-type": "text/html"}, b"<html>CANARY</html>")
    out = filter_response(policies, "openstack-nova", req, html)
    assert isinstance(out, Allowed) and out.status == 500 and out.body == b""


def test_gzip_body_is_decoded(policies: PolicySet) -> None:
    req = _get("/v2.1/servers/a1")
    body = gzip.compress(json.dumps({"server": {"id": "a1", "adminPass": "CANARY"}}).encode())
    resp = FilterResponse(200, {"content-type": "application/json", "content-encoding": "gzip"}, body)
    out = filter_response(policies, "openstack-nova", req, resp)
    assert isinstance(out, Allowed)
    assert out.body == b'{"server":{"id":"a1"}}' and "content-encoding" not in out.headers


@pytest.mark.parametrize(
    ("ctype", "body", "reason"),
    [
        ("text/html", b"{}", "content type"),
        ("", b"{}", "no content type"),
        ("application/json; charset=latin-1", b"{}", "charset"),
        ("application/json", b"\x89PNG\r\n\x1a\n\x00", "UTF-8"),
        ("application/json", b'"just a string"', "top-level"),
        ("application/json", b"{", "unparseable"),
        ("application/json", b'{"x": NaN}', "NaN"),
    ],
)
def test_unfilterable_bodies_are_denied(policies: PolicySet, ctype: str, body: bytes, reason: str) -> None:
    req = _get("/v2.1/servers/a1")
    out = filter_response(policies, "openstack-nova", req, FilterResponse(200, {"content-type": ctype}, body))
    assert isinstance(out, Denied) and reason in out.reason


# The relay matches each request once and hands the rule to filter_response (issue 14): the
# decision must be the one a second match would give, and a reload in between must not change
# which rule judges the response of a request already admitted.
_GIVEN_RULE_CASES = [
    ("/v2.1/servers/detail?limit=5", _json(200, SERVERS, **{"X-OpenStack-Request-ID": "r"})),
    ("/v2.1/servers/a1", _json(200, {"server": {"id": "a1", "adminPass": "CANARY"}})),
    ("/v2.1/servers/a1", _json(404, {"itemNotFound": {"message": "gone", "details": "CANARY"}})),
    ("/v2.1/servers/a1", FilterResponse(200, {"content-type": "application/json"}, b"{")),
    ("/v2.1/servers/a1", FilterResponse(200, {"content-type": "text/html"}, b"<html>")),
    ("/v2.1/servers/a1", FilterResponse(206, {"content-type": "application/json"}, b"{}")),
    ("/v2.1/servers/a1", FilterResponse(200, {"content-type": "application/json"}, b"")),
]


@pytest.mark.parametrize(("path", "resp"), _GIVEN_RULE_CASES)
def test_a_given_rule_decides_as_a_second_match_would(
    policies: PolicySet, path: str, resp: FilterResponse
) -> None:
    req = _get(path)
    rule = check_request(policies, "openstack-nova", req)
    assert isinstance(rule, Rule)
    assert filter_response(policies, "openstack-nova", req, resp, rule) == filter_response(
        policies, "openstack-nova", req, resp
    )


def test_a_given_rule_judges_the_response_after_a_reload(policies: PolicySet, tmp_path: Path) -> None:
    req = _get("/v2.1/servers/a1")
    rule = check_request(policies, "openstack-nova", req)
    assert isinstance(rule, Rule) and rule.name == "nova-server"
    other = tmp_path / "other"
    other.mkdir()
    (other / "nova.yaml").write_text(
        "kind: openstack-nova\nrules:\n  - name: flavors\n    path: /v2.1/flavors\n    json: [flavors]\n"
    )
    reloaded = load_policies([other])
    resp = _json(200, {"server": {"id": "a1", "adminPass": "CANARY"}})
    # Matched afresh, the reloaded set has no rule for it; judged by its own rule, it is filtered.
    assert isinstance(filter_response(reloaded, "openstack-nova", req, resp), Denied)
    out = filter_response(reloaded, "openstack-nova", req, resp, rule)
    assert isinstance(out, Allowed) and out.body == b'{"server":{"id":"a1"}}' and out.rule == "nova-server"
