"""PropertyCollector results: a wide property keeps only the fields the policy lists below it.

govc asks for `summary` (and `info`, `currentSession`) where the policy lists
`summary.config.name` and its siblings; the value's elements are named like the property path's
steps, so those fields are kept and everything else in the value (annotations, custom values)
is removed.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import defusedxml.ElementTree as DET
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.filter.jsonpath import compile_paths
from gateway.filter.metadata_filter import Allowed, FilterRequest, FilterResponse, filter_response
from gateway.filter.policy import PolicySet, XmlAllow, default_policy_dirs, load_policies
from gateway.filter.xmlfilter import XmlRejected, filter_xml

ELEMENTS = [
    "Envelope/Body/RetrievePropertiesExResponse/returnval/objects/obj",
    "Envelope/Body/RetrievePropertiesExResponse/returnval/objects/propSet/name",
    "Envelope/Body/RetrievePropertiesExResponse/returnval/objects/propSet/val/**",
]
HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects>'
    '<obj type="VirtualMachine">vm-42</obj>'
)
TAIL = "</objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"


def prop(name: str, val: str, *, val_first: bool = False) -> str:
    parts = [f"<name>{escape(name)}</name>", f"<val>{val}</val>"]
    return "<propSet>" + "".join(reversed(parts) if val_first else parts) + "</propSet>"


def run(properties: set[str], *props: str) -> bytes:
    allow = XmlAllow(elements=compile_paths(ELEMENTS, slash=True), properties=frozenset(properties))
    body, _kept, _removed = filter_xml((HEAD + "".join(props) + TAIL).encode(), allow)
    DET.fromstring(body)
    return body


SUMMARY = (
    "<vm type='VirtualMachine'>vm-42</vm>"
    "<runtime><host type='HostSystem'>host-1</host><powerState>poweredOn</powerState>"
    "<bootTime>2026-01-01T00:00:00Z</bootTime></runtime>"
    "<config><name>web-1</name><annotation>CANARY-note</annotation><uuid>u-1</uuid>"
    "<product><fullName>x</fullName><vendor>CANARY-vendor</vendor></product></config>"
    "<customValue><key>1</key><value>CANARY-custom</value></customValue>"
)


def test_a_wide_property_keeps_only_the_listed_fields() -> None:
    body = run(
        {"summary.config.name", "summary.runtime.powerState", "summary.runtime.host"},
        prop("summary", SUMMARY),
    )
    assert b"<name>summary</name>" in body
    assert b"<name>web-1</name>" in body and b"poweredOn" in body and b"host-1" in body
    assert b"CANARY" not in body and b"u-1" not in body and b"bootTime" not in body
    assert b"vm-42</vm>" not in body  # summary.vm is not listed


def test_a_listed_field_keeps_its_own_subtree() -> None:
    body = run({"summary.config.product"}, prop("summary", SUMMARY))
    assert b"<fullName>x</fullName>" in body and b"CANARY-vendor" in body
    assert b"CANARY-note" not in body and b"web-1" not in body


def test_a_property_inside_one_allowed_whole_is_allowed() -> None:
    body = run({"summary.config"}, prop("summary.config.product", "<fullName>x</fullName>"))
    assert b"<fullName>x</fullName>" in body


def test_a_value_before_its_name_is_only_kept_for_exact_properties() -> None:
    # Servers send the name first; a value seen before it cannot be narrowed, so it goes whole.
    assert b"web-1" not in run({"summary.config.name"}, prop("summary", SUMMARY, val_first=True))
    assert b"web-1" in run({"summary"}, prop("summary", SUMMARY, val_first=True))


@pytest.mark.parametrize(
    "props",
    [
        pytest.param(["config"], id="no-field-listed-below"),
        pytest.param(["summaryx.config.name"], id="prefix-of-a-step-is-not-a-step"),
    ],
)
def test_unlisted_properties_are_removed_whole(props: list[str]) -> None:
    body = run(set(props), prop("summary", SUMMARY))
    assert b"summary" not in body and b"web-1" not in body


def test_two_names_in_one_property_remove_it() -> None:
    allow = XmlAllow(
        elements=compile_paths(ELEMENTS, slash=True), properties=frozenset({"summary.config.name"})
    )
    doc = HEAD + f"<propSet><name>summary</name><name>name</name><val>{SUMMARY}</val></propSet>" + TAIL
    body, _k, _r = filter_xml(doc.encode(), allow)
    assert b"web-1" not in body


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policies(default_policy_dirs()[:1])


def test_shipped_policy_gives_govc_vm_info_its_fields_and_nothing_else(shipped: PolicySet) -> None:
    req_body = (
        b'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<soapenv:Body><RetrievePropertiesEx xmlns="urn:vim25"/></soapenv:Body></soapenv:Envelope>'
    )
    req = FilterRequest("POST", "/sdk", {"content-type": "text/xml"}, req_body)
    resp = FilterResponse(
        200, {"content-type": "text/xml; charset=utf-8"}, (HEAD + prop("summary", SUMMARY) + TAIL).encode()
    )
    out = filter_response(shipped, "vsphere-soap", req, resp)
    assert isinstance(out, Allowed), out
    for kept in (b"web-1", b"u-1", b"poweredOn", b"host-1", b"2026-01-01T00:00:00Z"):
        assert kept in out.body
    assert b"CANARY" not in out.body


# --- a reference model: random values, random allowed properties -------------------------------------

STEPS = ["a", "b", "c"]
values = st.recursive(
    st.just(None),
    lambda inner: st.dictionaries(st.sampled_from(STEPS), inner, min_size=1, max_size=3),
    max_leaves=12,
)
prop_paths = st.lists(st.sampled_from(STEPS), min_size=1, max_size=4).map(".".join)


def _render(value: object, path: tuple[str, ...], leaves: list[tuple[tuple[str, ...], str]]) -> str:
    if not isinstance(value, dict):
        token = f"LEAF{len(leaves):04d}X"
        leaves.append((path, token))
        return token
    return "".join(f"<{k}>{_render(v, (*path, k), leaves)}</{k}>" for k, v in value.items())


@settings(max_examples=200, deadline=None)
@given(name=prop_paths, value=values, allowed=st.lists(prop_paths, max_size=4))
def test_only_values_at_or_below_an_allowed_property_leave(
    name: str, value: object, allowed: list[str]
) -> None:
    leaves: list[tuple[tuple[str, ...], str]] = []
    val = _render(value, (), leaves)
    try:
        body = run(set(allowed), prop(name, val))
    except XmlRejected:
        return
    for path, token in leaves:
        full = name.split(".") + list(path)
        ok = any(full[: len(a.split("."))] == a.split(".") for a in allowed)
        assert (token.encode() in body) == ok, (name, path, allowed)
