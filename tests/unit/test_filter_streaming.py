"""A response filtered as it arrives decides exactly as the buffered filter on the whole body.

`stream_response` takes the XML bodies a rule filters (identity-encoded, not partial, with a
body) and leaves everything else to `filter_response`. For random documents cut at random
places, statuses, content types and encodings, the streamed decision (feed every piece, then
finish) must equal filter_response's on the whole body: the same Allowed (status, headers,
bytes, counts) or the same Denied.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.filter.jsonpath import compile_paths
from gateway.filter.metadata_filter import FilterRequest, FilterResponse, filter_response, stream_response
from gateway.filter.policy import BodyAllow, Kind, PathPattern, PolicySet, Rule, XmlAllow
from gateway.filter.xmlfilter import XmlStreamFilter, filter_xml
from tests.unit.test_xmlfilter_reference import SOAP, _allow, documents

_ELEMENTS = [
    "Envelope/Body/*/returnval/objects/obj",
    "Envelope/Body/*/returnval/objects/propSet/name",
    "Envelope/Body/*/returnval/objects/propSet/val/**",
    "Envelope/Body/Fault/faultstring",
]


def _policies(max_body: int) -> PolicySet:
    xml = XmlAllow(
        elements=compile_paths(_ELEMENTS, slash=True), properties=frozenset({"name", "summary.config.name"})
    )
    rule = Rule(
        name="soap",
        kind=Kind.HTTP,
        methods=frozenset({"GET", "HEAD", "POST"}),
        path=PathPattern("/sdk", ("sdk",)),
        source="t:1",
        body=BodyAllow(xml=xml),
        errors=BodyAllow(
            xml=XmlAllow(elements=compile_paths(["Envelope/Body/Fault/faultstring"], slash=True))
        ),
        headers=frozenset({"set-cookie"}),
        max_body_bytes=max_body,
    )
    return PolicySet({Kind.HTTP: (rule,)}, ())


def _pieces(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.one_of(documents(), st.just(SOAP), st.just(""), st.just(SOAP[:-9])),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    status=st.sampled_from([200, 200, 201, 404, 500, 204, 304, 206, 103]),
    ctype=st.sampled_from(
        ["text/xml", "text/xml; charset=utf-8", "application/soap+xml", "application/json", ""]
    ),
    encoding=st.sampled_from(["", "", "identity", "gzip"]),
    extra=st.sampled_from(
        [[], [("Set-Cookie", "s=1")], [("Content-Range", "bytes 0-1/2")], [("Content-Type", "text/xml")]]
    ),
    method=st.sampled_from(["POST", "POST", "HEAD", "GET"]),
    max_body=st.sampled_from([1 << 20, 200]),
)
def test_streamed_decisions_are_the_buffered_decisions(
    doc: str,
    cuts: list[int],
    status: int,
    ctype: str,
    encoding: str,
    extra: list[Any],
    method: str,
    max_body: int,
) -> None:
    policies, body = _policies(max_body), doc.encode()
    headers = [("Content-Type", ctype), ("Content-Encoding", encoding), ("X-Secret", "no"), *extra]
    req = FilterRequest(method, "/sdk", {})
    streamed = stream_response(policies, "http", req, status, _multi(headers))
    buffered = filter_response(policies, "http", req, FilterResponse(status, _multi(headers), body))
    if streamed is None:
        return
    assert status not in (204, 304, 206, 103) and method != "HEAD" and encoding != "gzip"
    for piece in _pieces(body, cuts):
        streamed.feed(piece)
    assert streamed.finish() == buffered


def _multi(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(headers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), cuts=st.lists(st.integers(0, 5_000), max_size=8))
def test_any_cut_of_the_input_gives_the_same_output(doc: str, cuts: list[int]) -> None:
    allow = _allow([(["Envelope"], True), (["a", "b"], False)], ["name"], ["type"])
    body = doc.encode()
    try:
        whole: Any = filter_xml(body, allow)
    except ValueError as exc:
        whole = str(exc)
    stream = XmlStreamFilter(allow)
    try:
        for piece in _pieces(body, cuts):
            stream.feed(piece)
        cut: Any = stream.close()
    except ValueError as exc:
        cut = str(exc)
    assert cut == whole
