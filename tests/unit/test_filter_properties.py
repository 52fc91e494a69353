"""Property tests: random documents and random policies, checked against an independent reference.

Every leaf in the generated documents holds a unique token, so "no disallowed value appears in the
output bytes" is a plain substring check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from xml.sax.saxutils import escape

import defusedxml.ElementTree as DET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.filter.jsonpath import compile_paths
from gateway.filter.metadata_filter import (
    Allowed,
    Denied,
    FilterRequest,
    FilterResponse,
    filter_json,
    filter_response,
)
from gateway.filter.policy import BodyAllow, Kind, PathPattern, PolicySet, Rule, XmlAllow
from gateway.filter.xmlfilter import filter_xml

KEYS = ["a", "b", "c", "d.e", "*", "@odata.id"]
WILD, ITEMS, SUBTREE = object(), object(), object()
Step = Any  # str key, or one of the markers above

# --- documents --------------------------------------------------------------------------------------

json_docs = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(max_size=4)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=30,
).filter(lambda d: isinstance(d, dict | list))


def _tokenize(doc: Any, counter: list[int]) -> Any:
    """Replace every leaf with a unique token so values can be found in output bytes."""
    if isinstance(doc, dict):
        return {k: _tokenize(v, counter) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_tokenize(v, counter) for v in doc]
    counter[0] += 1
    return f"LEAF{counter[0]:04d}X"


def _leaves(doc: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _leaves(v, (*path, i))
    else:
        yield path, doc


# --- policies: steps are generated, then printed in the path syntax --------------------------------

step = st.one_of(st.sampled_from(KEYS), st.just(WILD))
segments = st.lists(st.tuples(step, st.integers(0, 2)), min_size=1, max_size=4)
json_paths = st.tuples(st.integers(0, 1), segments, st.booleans())


def _render(path: tuple[int, list[tuple[Step, int]], bool]) -> tuple[str, list[Step]]:
    top_items, segs, subtree = path
    text, steps = "[]" * top_items, [ITEMS] * top_items
    for n, (key, items) in enumerate(segs):
        if n or top_items:
            text += "."
        if key is WILD:
            text += "*"
        elif any(c in key for c in '.[]"*') or not key.isalnum():
            text += f'"{key}"'
        else:
            text += key
        text += "[]" * items
        steps += [key, *([ITEMS] * items)]
    if subtree:
        text += ".**"
        steps.append(SUBTREE)
    return text, steps


def _reference_allows(patterns: list[list[Step]], path: tuple[str | int, ...]) -> bool:
    """Independent matcher: does any pattern allow the leaf at this concrete path?"""

    def match(pat: list[Step], p: tuple[str | int, ...]) -> bool:
        if pat and pat[0] is SUBTREE:
            return True
        if not pat or not p:
            return not pat and not p
        head, rest = pat[0], pat[1:]
        if head is ITEMS:
            return isinstance(p[0], int) and match(rest, p[1:])
        if isinstance(p[0], int):
            return False
        return (head is WILD or head == p[0]) and match(rest, p[1:])

    return any(match(pat, path) for pat in patterns)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_docs, paths=st.lists(json_paths, max_size=6))
def test_json_output_is_exactly_the_allowed_leaves(doc: Any, paths: list[Any]) -> None:
    doc = _tokenize(doc, [0])
    rendered = [_render(p) for p in paths]
    allow = compile_paths([text for text, _ in rendered])
    patterns = [steps for _, steps in rendered]
    try:
        body, kept, _ = filter_json(json.dumps(doc).encode(), allow)
    except ValueError:
        # Denied (e.g. a top-level array no path reaches): only correct if nothing was allowed.
        assert not any(_reference_allows(patterns, p) for p, _ in _leaves(doc))
        return
    out = json.loads(body)
    # Every leaf in the output sits at an allowed path...
    out_leaves = list(_leaves(out))
    for path, _value in out_leaves:
        assert _reference_allows(patterns, path), (path, [t for t, _ in rendered])
    # ...no leaf at a disallowed path appears anywhere in the output bytes, and allowed ones stay.
    for path, value in _leaves(doc):
        if _reference_allows(patterns, path):
            assert value.encode() in body, (path, value)
        else:
            assert value.encode() not in body, (path, value)
    assert kept >= 0


# --- XML ---------------------------------------------------------------------------------------------

NAMES = ["root", "item", "name", "val", "propSet"]
xml_trees = st.recursive(
    st.tuples(st.sampled_from(NAMES), st.just(None)),
    lambda inner: st.tuples(st.sampled_from(NAMES), st.lists(inner, max_size=4)),
    max_leaves=25,
)


def _xml(
    tree: Any, counter: list[int], leaves: list[tuple[tuple[str, ...], str]], path: tuple[str, ...]
) -> str:
    name, children = tree
    here = (*path, name)
    if children is None:
        counter[0] += 1
        token = f"LEAF{counter[0]:04d}X"
        leaves.append((here, token))
        return f'<{name} type="T" secret="S{token}">{escape(token)}</{name}>'
    counter[0] += 1
    # Attributes: `type` is allowed by default; any other attribute value must never leave.
    head = f'<{name} type="T" secret="SLEAF{counter[0]:04d}X">'
    return head + "".join(_xml(c, counter, leaves, here) for c in children) + f"</{name}>"


xml_paths = st.tuples(
    st.lists(st.one_of(st.sampled_from(NAMES), st.just("*")), min_size=1, max_size=4), st.booleans()
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=xml_trees, paths=st.lists(xml_paths, max_size=5), props=st.lists(st.sampled_from(NAMES), max_size=2)
)
def test_xml_output_keeps_only_allowed_elements(tree: Any, paths: list[Any], props: list[str]) -> None:
    leaves: list[tuple[tuple[str, ...], str]] = []
    doc = _xml(("root", [tree]), [0], leaves, ())
    texts = ["/".join(p) + ("/**" if sub else "") for p, sub in paths]
    patterns = [[WILD if s == "*" else s for s in p] + ([SUBTREE] if sub else []) for p, sub in paths]
    allow = XmlAllow(elements=compile_paths(texts, slash=True), properties=frozenset(props))
    try:
        body, _, _ = filter_xml(doc.encode(), allow)
    except ValueError:
        return  # root not allowed / nothing allowed: a denial, nothing leaves
    DET.fromstring(body)  # well-formed
    for path, token in leaves:
        if token.encode() in body:
            assert _reference_allows(patterns, path), (path, texts)
    assert b"SLEAF" not in body and b"secret=" not in body


# --- never raises ---------------------------------------------------------------------------------------

_RULE = Rule(
    name="any",
    kind=Kind.HTTP,
    methods=frozenset({"GET", "HEAD", "POST"}),
    path=PathPattern("/**", ("**",)),
    source="test:1",
    body=BodyAllow(
        json=compile_paths(["a.b", "[].a", "*.**"]),
        xml=XmlAllow(elements=compile_paths(["root/**", "Envelope/Body/*/returnval/**"], slash=True)),
    ),
    errors=BodyAllow(json=compile_paths(["error.message"])),
    soap_operations=None,
    max_body_bytes=1 << 16,
)
_POLICIES = PolicySet({Kind.HTTP: (_RULE,)}, ())

ctypes = st.sampled_from(
    [
        "application/json",
        "text/xml",
        "application/soap+xml",
        "",
        "text/html",
        "application/json; charset=utf-16",
    ]
)
encodings = st.sampled_from(["", "gzip", "deflate", "identity", "br", "GZIP"])


@settings(max_examples=300, deadline=None)
@given(
    method=st.text(max_size=8),
    path=st.text(max_size=40),
    status=st.integers(-5, 700),
    ctype=ctypes,
    encoding=encodings,
    body=st.binary(max_size=300),
    headers=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_filter_never_raises(
    method: str, path: str, status: int, ctype: str, encoding: str, body: bytes, headers: dict[str, str]
) -> None:
    req = FilterRequest(method, "/" + path, headers, body)
    resp = FilterResponse(status, {**headers, "content-type": ctype, "content-encoding": encoding}, body)
    out = filter_response(_POLICIES, "http", req, resp)
    assert isinstance(out, Allowed | Denied)


@settings(max_examples=100, deadline=None)
@given(doc=json_docs, junk=st.binary(max_size=20), cut=st.integers(0, 200))
def test_mangled_json_never_raises(doc: Any, junk: bytes, cut: int) -> None:
    raw = json.dumps(doc).encode()
    for body in (raw[:cut] + junk, junk + raw, raw.replace(b'"', b"'", 1)):
        resp = FilterResponse(200, {"content-type": "application/json"}, body)
        out = filter_response(_POLICIES, "http", FilterRequest("GET", "/x", {}), resp)
        assert isinstance(out, Allowed | Denied)
