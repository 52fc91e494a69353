"""The XML filter in C (gateway/filter/_xmlfast.c) against the pure-Python filter, its reference.

Issue 14: the per-element work moved to C for speed; nothing else may change. For random
documents and allowlists, hostile bytes, every encoding path, chunkings and the edges of each
bound, the C filter must give the same bytes and counts as `_Filter`, or refuse with the same
reason. The other XML tests (reference, streaming, properties) run on whichever filter the
product uses, which is the C one wherever it is built: CI builds it (`make venv`).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.filter import xmlfilter
from gateway.filter.jsonpath import compile_paths
from gateway.filter.policy import XmlAllow
from gateway.filter.xmlfilter import XmlRejected, XmlStreamFilter
from tests.unit.test_xmlfilter_reference import _PATHS, _PROPERTY_NAMES, SOAP, _allow, documents

pytestmark = pytest.mark.unit

_SOAP_ALLOW = _allow(
    [
        (["Envelope", "Body", "*", "returnval", "objects", "*", "val"], True),
        (["Envelope", "Body", "*", "returnval", "objects", "propSet", "name"], False),
        (["Envelope", "Body", "*", "returnval", "objects", "obj"], False),
    ],
    ["summary.config.name", "name"],
    ["type"],
)


def _filter(body: bytes, allow: XmlAllow, *, pure: bool, cuts: list[int] | None = None) -> Any:
    """(bytes, kept, removed), or the refusal's reason; fed in pieces cut at `cuts`."""
    stream = XmlStreamFilter(allow, pure=pure)
    try:
        last = 0
        for cut in sorted(set(cuts or [])):
            stream.feed(body[last:cut])
            last = cut
        stream.feed(body[last:])
        out, kept, removed = stream.close()
        return bytes(out), kept, removed
    except XmlRejected as exc:
        return f"refused: {exc}"


def _same(body: bytes, allow: XmlAllow, cuts: list[int] | None = None) -> Any:
    fast = _filter(body, allow, pure=False, cuts=cuts)
    assert fast == _filter(body, allow, pure=True), body[:200]
    return fast


def test_the_c_filter_is_built_and_used() -> None:
    # CI and the image build it; a missing build would silently fall back to the slow filter.
    assert xmlfilter.accelerated()
    assert XmlStreamFilter(_SOAP_ALLOW)._fast is not None
    assert XmlStreamFilter(_SOAP_ALLOW, pure=True)._fast is None


def test_a_soap_answer_keeps_only_the_allowed_properties() -> None:
    out, kept, removed = _same(SOAP.encode(), _SOAP_ALLOW)
    assert b"secret" not in out
    assert b"<name>n</name>" in out and b'<obj type="VirtualMachine">vm-1</obj>' in out
    assert (kept, removed) == (3, 3)  # vm-1, summary, n; annotation, config.annotation, x


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=documents(),
    paths=_PATHS,
    props=st.lists(_PROPERTY_NAMES, max_size=3),
    attrs=st.lists(st.sampled_from(["type", "lang", "secret"]), max_size=2),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_random_documents_give_the_same_bytes_or_refusal(
    doc: str, paths: list[Any], props: list[str], attrs: list[str], cuts: list[int]
) -> None:
    _same(doc.encode(), _allow(paths, props, attrs), cuts)


_HOSTILE = [
    b"",
    b"<",
    b"<a>",
    b"</a>",
    b"<a></b>",
    b"\x00<a/>",
    b"<a>\x00</a>",
    b"<a>&undefined;</a>",
    b"<a>&#0;</a>",
    b"<a>&#x1c;</a>",
    b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>',
    b'<!DOCTYPE a SYSTEM "http://127.0.0.1/x.dtd"><a/>',
    b"<a/><b/>",
    b"<a/>junk",
    b"<a xmlns:p='urn:p'><p:b p:type='1' q:type='2'/></a>",
    b"<a><p:b/></a>",
    b"<a xmlns='urn:a' xmlns:p='urn:a'><b p:type='x'/></a>",
    b"<a xmlns:p='urn:a'><b xmlns='urn:a' p:type='x'/></a>",
    b"<a xmlns=''><b xmlns='urn:b'><c xmlns=''/></b></a>",
    b"<a xml:lang='en' xmlns:xml='http://www.w3.org/XML/1998/namespace'><b xml:lang='de'/></a>",
    b'<?xml version="1.0" encoding="ISO-8859-1"?><a>caf\xe9 \xa0</a>',
    b'<?xml version="1.0" encoding="windows-1252"?><a type="\x80">\x93q\x94</a>',
    b'<?xml version="1.0" encoding="x-no-such-codec"?><a/>',
    b'<?xml version="1.0" encoding="shift_jis"?><a/>',
    b'<?xml version="1.0" encoding="UTF-16"?><a/>',
    "\ufeff<a>x</a>".encode("utf-16"),
    "<a>\u2028\u3000\x85</a>".encode(),
    "<a>\u00a0<b>x</b>\u2003</a>".encode(),
    b"<a><b>\xff</b></a>",
    b"<a><b>\xc3</b></a>",
    b"<a type='a\"b' lang=\"a'b\" secret='x'>t</a>",
    b"<a type='&quot;&apos;&lt;&#10;&#13;&#9;'/>",
    b"<a><![CDATA[<b>&amp;</b>]]></a>",
    b"<a><!-- c --><?pi x?>t</a>",
    b"<a>" * 128 + b"</a>" * 128,
    b"<a>" * 129 + b"</a>" * 129,
    b"<a><x>" + b"<b>" * 200 + b"</b>" * 200 + b"</x></a>",
]


@pytest.mark.parametrize("body", _HOSTILE, ids=range(len(_HOSTILE)))
@pytest.mark.parametrize("whole", [True, False])
def test_hostile_bodies_get_the_same_answer(body: bytes, whole: bool) -> None:
    allow = XmlAllow(
        elements=compile_paths(["a/**" if whole else "a/b"], slash=True),
        properties=frozenset(),
        attributes=frozenset({"type", "lang"}),
    )
    _same(body, allow)
    _same(body, allow, cuts=list(range(0, len(body), 3)))  # expat's states across every boundary


_INSERTS = [b"<", b">", b"&", b"<x>", b"</x>", b"\xe9", b"<!DOCTYPE a>", b'"', b"]]>"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@example(data=None)
def test_mangled_soap_gives_the_same_answer(data: Any) -> None:
    body = bytearray(SOAP.encode())
    if data is not None:
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(body)))
            how = data.draw(st.sampled_from(["flip", "cut", "insert", "drop"]))
            if how == "flip" and at < len(body):
                body[at] = data.draw(st.integers(0, 255))
            elif how == "cut":
                del body[at:]
            elif how == "insert":
                body[at:at] = data.draw(st.sampled_from(_INSERTS))
            elif at < len(body):
                del body[at]
    _same(bytes(body), _SOAP_ALLOW)


_PROPERTY_NAME_TEXTS = [
    "summary",
    " summary\n",
    "\u00a0summary\u2003",
    "\u00a0name",
    "name\u3000",
    "summary.config",
    "summary.config.name",
    "summary.",
    ".summary",
    "",
    " ",
    "\u00a0",
    "na&amp;me",
    "summ<![CDATA[ary]]>",
    "é",
]


@pytest.mark.parametrize("name", _PROPERTY_NAME_TEXTS)
@pytest.mark.parametrize("second", [None, "name", "summary"])
def test_property_names_are_judged_alike(name: str, second: str | None) -> None:
    # The C filter strips and judges each property name once per document (a cache); whitespace,
    # Unicode whitespace, a second name before or after the value: the same answer as _Filter.
    names = f"<name>{name}</name>" + (f"<name>{second}</name>" if second else "")
    value = "<val><config><name>n</name><annotation>secret</annotation></config></val>"
    for prop in (names + value, f"<name>{name}</name>{value}" + (f"<name>{second}</name>" if second else "")):
        _same(
            SOAP.replace("<name>summary</name><val xsi:type", prop + "<x/><val xsi:type", 1).encode(),
            _SOAP_ALLOW,
        )
        _same(
            SOAP.replace(
                "<propSet><name>summary</name>", f"<propSet>{prop}</propSet><propSet><name>summary</name>"
            ).encode(),
            _SOAP_ALLOW,
        )


def test_many_distinct_names_overflow_the_caches_without_changing_the_answer() -> None:
    # The C filter's name caches empty themselves past 4096 entries (a hostile document).
    names = "".join(f"<e{i} type='t' a{i}='s'>x</e{i}>" for i in range(5000))
    whole = XmlAllow(elements=compile_paths(["a/**"], slash=True))
    out, kept, removed = _same(f"<a>{names}</a>".encode(), whole)
    assert (kept, removed) == (5000, 5000)  # the texts kept, the a{i} attributes removed
    assert out.count(b"type='t'") + out.count(b'type="t"') == 5000


def test_held_is_the_output_so_far_and_a_refusal_sticks() -> None:
    stream = XmlStreamFilter(_SOAP_ALLOW)
    half = len(SOAP) // 2
    stream.feed(SOAP[:half].encode())
    assert stream.held > 0
    stream.feed(SOAP[half:].encode())
    out, _, _ = stream.close()
    assert stream.held == 0 and len(out) > len(xmlfilter._DECLARATION)

    bad = XmlStreamFilter(_SOAP_ALLOW)
    with pytest.raises(XmlRejected, match="unparseable XML: DTDForbidden"):
        bad.feed(b"<!DOCTYPE a><a/>")
    with pytest.raises(XmlRejected, match="unparseable XML: DTDForbidden"):
        bad.feed(b"<a/>")
    with pytest.raises(XmlRejected, match="unparseable XML: DTDForbidden"):
        bad.close()
