"""Method overrides are refused in every form a server may honour: headers (as before), the query
string and a form-encoded body. Each would turn an allowed GET (or a POST a rule allows) into
a write the policy never allowed."""

from __future__ import annotations

import textwrap

import pytest

from gateway.filter.metadata_filter import Denied, FilterRequest, check_request
from gateway.filter.policy import PolicySet, Rule, load_policies

POLICY = """\
kind: http
rules:
  - name: read
    path: /things
  - name: login
    methods: [POST]
    allow_write: true
    path: /login
"""

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    d = tmp_path_factory.mktemp("override")
    (d / "p.yaml").write_text(textwrap.dedent(POLICY))
    return load_policies([d])


@pytest.mark.parametrize(
    "query",
    [
        "_method=PUT",
        "_METHOD=DELETE",
        "a=1&_method=PUT",
        "a=1;_method=PUT",
        "%5Fmethod=PUT",
        "%5fMethod=PUT",
        "%255Fmethod=PUT",
        "_method",
        "x-http-method-override=DELETE",
        "X-HTTP-Method-Override=DELETE",
        "x%2Dhttp%2Dmethod%2Doverride=DELETE",
        "x-http-method=PATCH",
        "x-method-override=PUT",
        "x_http_method_override=PUT",
        "+_method=PUT",
    ],
)
def test_query_string_overrides_are_refused(policies: PolicySet, query: str) -> None:
    verdict = check_request(policies, "http", FilterRequest("GET", f"/things?{query}", {}))
    assert isinstance(verdict, Denied) and "override" in verdict.reason, verdict


@pytest.mark.parametrize("query", ["method=GET", "x-method=GET", "methods=a", "a=_method", "limit=5"])
def test_ordinary_queries_pass(policies: PolicySet, query: str) -> None:
    assert isinstance(check_request(policies, "http", FilterRequest("GET", f"/things?{query}", {})), Rule)


@pytest.mark.parametrize(
    "body",
    [b"user=a&_method=DELETE", b"_method=PUT", b"%5Fmethod=PUT", b"a=1;X-HTTP-Method-Override=PUT"],
)
def test_form_body_overrides_are_refused(policies: PolicySet, body: bytes) -> None:
    for ctype in ("application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8"):
        req = FilterRequest("POST", "/login", {"Content-Type": ctype}, body)
        verdict = check_request(policies, "http", req)
        assert isinstance(verdict, Denied) and "override" in verdict.reason, verdict


def test_form_bodies_are_inspected_or_refused(policies: PolicySet) -> None:
    ok = FilterRequest("POST", "/login", FORM, b"user=a&password=b")
    assert isinstance(check_request(policies, "http", ok), Rule)
    # A form the filter was not shown cannot be checked: fail closed.
    unseen = FilterRequest("POST", "/login", FORM, None)
    assert isinstance(check_request(policies, "http", unseen), Denied)
    # Other content types carry no form fields; JSON with "_method" is data, not an override.
    data = FilterRequest("POST", "/login", {"Content-Type": "application/json"}, b'{"_method": "PUT"}')
    assert isinstance(check_request(policies, "http", data), Rule)
