"""The JSON filter's two walks give one answer (issue 14).

Small bodies are parsed whole in one C call (`filter_whole`), large ones are streamed a top-level
element at a time (`filter_streamed`, the reference). For any text and any allowlist, the whole
walk must give the streamed walk's bytes and counts, or step aside (None) so that the streamed
walk gives the refusal and its reason. `filter_json` must equal the streamed walk, refusals
included, whichever path it takes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.filter.jsonfilter import JsonRejected, filter_json, filter_streamed, filter_whole
from gateway.filter.jsonpath import compile_paths
from tests.unit.test_filter_properties import _render, json_paths

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
_KEYS = st.sampled_from(["a", "b", "c", "d.e", "*", "@odata.id", "é", "\u2028"])
docs = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=30,
)
# Texts a plain json.dumps never makes: each is a way to be refused, or a way past one.
_EDGES = [
    '{"a": 1, "a": 2}',
    '{"a": {"b": 1, "b": 1}}',
    '{"a": [{"c": 1, "c": 2}]}',
    '[{"a": 1, "a": 1}]',
    '{"a": NaN}',
    '{"a": [Infinity]}',
    '{"a": 1e400}',
    '{"a": -1e400}',
    '{"a": 0.' + "1" * 70 + "}",
    '{"a": ' + "1" * 5000 + "}",
    '{"a": "\\ud800"}',
    '{"a": 1} x',
    '{"a": 1}{"b": 2}',
    '{"a": 1,}',
    "[1, 2,]",
    '"scalar"',
    "12",
    "",
    "  ",
    '{"a": "\x01"}',
    ' {"a" : [ 1 , { "b" : 2 } ] } \n',
    "[" * 2000 + "]" * 2000,
    '{"a": ' + "[" * 995 + "]" * 995 + "}",
    '{"a": ' + '{"a": ' * 990 + "1" + "}" * 990 + "}",
]


def _run(fn: Any, *args: Any) -> tuple[bytes, int, int] | str:
    try:
        result: tuple[bytes, int, int] = fn(*args)
        return result
    except JsonRejected as exc:
        return f"refused: {exc}"


def _check(text: str, paths: list[Any], everything: bool = False) -> None:
    allow = compile_paths([t for t, _ in (_render(p) for p in paths)] + (["**"] if everything else []))
    streamed = _run(filter_streamed, text, allow.root)
    whole = filter_whole(text, allow.root)
    if whole is not None:
        assert whole == streamed
    assert _run(filter_json, text.encode("utf-8", "surrogatepass"), allow) == streamed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs, paths=st.lists(json_paths, max_size=6), spaced=st.booleans(), everything=st.booleans())
def test_whole_and_streamed_walks_agree_on_documents(
    doc: Any, paths: list[Any], spaced: bool, everything: bool
) -> None:
    text = json.dumps(doc, ensure_ascii=False) if spaced else json.dumps(doc, separators=(",", ":"))
    _check(text, paths, everything)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=docs,
    paths=st.lists(json_paths, max_size=4),
    edge=st.sampled_from(_EDGES),
    cut=st.integers(0, 60),
    where=st.sampled_from(["alone", "inside", "cut"]),
)
def test_whole_and_streamed_walks_agree_on_hostile_texts(
    doc: Any, paths: list[Any], edge: str, cut: int, where: str
) -> None:
    if where == "alone":
        text = edge
    elif where == "inside":
        text = json.dumps({"a": doc, "b": "x"})[:-1] + ', "c": ' + (edge or "0") + "}"
    else:
        text = json.dumps({"a": [doc, doc]})[: cut + 1]
    _check(text, paths, everything=cut % 7 == 0)


@pytest.mark.parametrize("edge", _EDGES)
def test_every_hostile_text_gets_the_streamed_answer(edge: str) -> None:
    _check(edge, [(0, [("a", 0)], True), (1, [("b", 0)], False)])
    _check(edge, [], everything=True)
