"""The XML filter against its pre-issue-14 self (tests/unit/reference_xmlfilter.py), byte for byte.

Issue 14 made the filter cheaper per element (qualified names cached per namespace scope, escaping
only where a character needs it, dropped subtrees skipped with bare depth-counting handlers).
The output must not change: for random documents (namespaces declared, redeclared and shadowed,
allowed and secret attributes, mixed content, whitespace, comments, PIs, CDATA, character
references, deep nesting, DTDs) and random allowlists, both give the same bytes and counts, or
the same refusal.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.filter.jsonpath import compile_paths
from gateway.filter.policy import XmlAllow
from gateway.filter.xmlfilter import XmlRejected, filter_xml
from tests.unit import reference_xmlfilter as reference

_NAMES = ["Envelope", "Body", "returnval", "objects", "obj", "propSet", "changeSet", "name", "val", "a", "b"]
_PREFIXES = ["", "", "", "s", "v", "xsi"]
_URIS = ["urn:vim25", "http://schemas.xmlsoap.org/soap/envelope/", "urn:x", "urn:y"]
_TEXTS = st.sampled_from(
    ["", "", "x", "name", "summary", "summary.config.name", "guest.net", "config", " ", "\n  ", "a&amp;b",
     "&lt;t&gt;", "q\"'", "\u00a0", "\u2003x", "&#13;", "&#x9;", "<![CDATA[c<d]]>", "<!-- c -->", "<?pi x?>",
     "é", "tab\there", "runtime.powerState"]
)  # fmt: skip
_PROPERTY_NAMES = st.sampled_from(
    ["name", "summary", "summary.config", "summary.config.name", "guest", "guest.net", "config.annotation"]
)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(st.sampled_from(_NAMES))
    prefix = draw(st.sampled_from(_PREFIXES))
    attrs = ""
    if draw(st.integers(0, 3)) == 0:
        uri = draw(st.sampled_from(_URIS))
        attrs += f' xmlns:{prefix}="{uri}"' if prefix else f' xmlns="{uri}"'
    elif prefix and prefix != "xsi" and draw(st.booleans()):
        attrs += f' xmlns:{prefix}="{draw(st.sampled_from(_URIS))}"'
    for attr in draw(
        st.lists(st.sampled_from(["type", "secret", "xsi:type", "v:type", "xml:lang"]), max_size=2)
    ):
        if attr + "=" not in attrs:
            value = draw(st.sampled_from(["T", "q\"'", "a&amp;b", "&lt;", "tab\t", "line&#10;", ""]))
            attrs += f" {attr}='{value}'" if '"' in value else f' {attr}="{value}"'
    qname = f"{prefix}:{name}" if prefix else name
    if name == "name" and draw(st.booleans()):
        inner = draw(_PROPERTY_NAMES)
    elif depth >= 4 or draw(st.integers(0, 2)) == 0:
        inner = draw(_TEXTS)
    else:
        parts = []
        for _ in range(draw(st.integers(0, 4))):
            parts.append(draw(_TEXTS) if draw(st.integers(0, 3)) == 0 else draw(elements(depth + 1)))
        inner = "".join(parts)
    return f"<{qname}{attrs}>{inner}</{qname}>"


def _mostly(good: list[str], bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Usually one of `good`, sometimes something from `bad`: both sides of the edge get drawn."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 0 else st.sampled_from(good))


@st.composite
def documents(draw: st.DrawFn) -> str:
    decls = ' xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="urn:xsi" xmlns:v="urn:vim25"'
    if draw(st.integers(0, 4)):
        children = "".join(draw(st.lists(elements(1), max_size=4)))
        root = f"<s:Envelope{decls}>{children}</s:Envelope>"
    else:
        body = draw(elements())
        end = body.index(">")  # the usual declarations go into the root's start tag, unless there
        root = body if " xmlns:s=" in body[:end] else body[:end] + decls + body[end:]
    prolog = draw(
        _mostly(
            ["", '<?xml version="1.0" encoding="UTF-8"?>'], st.sampled_from(["<!-- c -->", "<!DOCTYPE a>"])
        )
    )
    return prolog + root + draw(_mostly(["", "\n"], st.sampled_from(["<!-- t -->", "junk", "<a/>"])))


_STEPS = st.lists(st.sampled_from([*_NAMES, "*"]), min_size=0, max_size=5)
_PATHS = st.lists(
    st.tuples(
        st.tuples(_mostly(["Envelope"], st.sampled_from([*_NAMES, "*"])), _STEPS).map(
            lambda t: [t[0], *t[1]]
        ),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


def _allow(paths: list[Any], props: list[str], attrs: list[str]) -> XmlAllow:
    texts = ["/".join(p) + ("/**" if sub else "") for p, sub in paths]
    return XmlAllow(
        elements=compile_paths(texts, slash=True), properties=frozenset(props), attributes=frozenset(attrs)
    )


def _run(fn: Any, body: bytes, allow: XmlAllow) -> tuple[bytes, int, int] | str:
    try:
        result: tuple[bytes, int, int] = fn(body, allow)
        return result
    except (XmlRejected, reference.XmlRejected) as exc:
        return f"refused: {exc}"


SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/'
    'envelope/" xmlns:xsi="urn:xsi"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>'
    '<objects><obj type="VirtualMachine">vm-1</obj><propSet><name>summary</name><val xsi:type="S"><config>'
    "<name>n</name><annotation>secret</annotation></config></val></propSet><propSet><name>config.annotation"
    "</name><val>secret</val></propSet><missing><x>1</x></missing></objects></returnval>"
    "</RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=documents(),
    paths=_PATHS,
    props=st.lists(_PROPERTY_NAMES, max_size=3),
    attrs=st.lists(st.sampled_from(["type", "lang", "secret"]), max_size=2),
)
@example(SOAP, [(["Envelope", "Body", "*", "returnval", "objects", "*", "val"], True),
                (["Envelope", "Body", "*", "returnval", "objects", "propSet", "name"], False),
                (["Envelope", "Body", "*", "returnval", "objects", "obj"], False)],
         ["summary.config.name"], ["type"])  # fmt: skip
@example("<a>" * 130 + "</a>" * 130, [(["a"], True)], [], [])
@example("<a><b>" + "<x>" * 130 + "</x>" * 130 + "</b><b>t</b></a>", [(["a", "b"], False)], [], [])
@example('<a xmlns:p="urn:1"><p:b xmlns:p="urn:2"><p:c/></p:b></a>', [(["a"], True)], [], [])
@example('<v:a xmlns:v="urn:v"><v:b/><b xmlns="urn:v"><v:b/></b><v:b/></v:a>', [(["a"], True)], [], [])
@example(
    '<a xmlns:v="urn:v"><x v:type="1"/><x xmlns:w="urn:v" v:type="2"/><x v:type="3"/></a>',
    [(["a"], True)],
    [],
    ["type"],
)
def test_the_filter_writes_what_it_wrote_before(
    doc: str, paths: list[Any], props: list[str], attrs: list[str]
) -> None:
    allow = _allow(paths, props, attrs)
    body = doc.encode()
    assert _run(filter_xml, body, allow) == _run(reference.filter_xml, body, allow)
