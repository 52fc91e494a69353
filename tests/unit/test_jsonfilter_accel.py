"""The JSON filter's C functions (gateway/filter/_jsonfast.c) against their Python references.

Issue 14 moved the per-value walk and the decoder's two hooks to C. For any value and any
allowlist the C walk must return what `_filter_value_py` returns, with the same counts; the hooks
must build the same dicts and floats and refuse the same inputs; and `filter_json` run on the C
functions must give the bytes, counts and refusals it gives on the Python ones.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.filter import jsonfilter
from gateway.filter.jsonfilter import JsonRejected, filter_json
from gateway.filter.jsonpath import compile_paths
from tests.unit.test_filter_properties import _render, json_paths
from tests.unit.test_jsonfilter_walks_agree import _EDGES, docs

pytestmark = pytest.mark.unit


def test_the_c_functions_are_built_and_used() -> None:
    # CI and the image build them; a missing build would silently fall back to the slow walk.
    assert jsonfilter._jsonfast is not None
    assert jsonfilter._filter_value is jsonfilter._jsonfast.filter_value
    assert jsonfilter._pairs is jsonfilter._jsonfast.pairs
    assert jsonfilter._float is jsonfilter._jsonfast.parse_float


_PATH_LISTS = st.tuples(st.lists(json_paths, max_size=5), st.booleans()).map(
    lambda t: [_render(p)[0] for p in t[0]] + (["**"] if t[1] else [])
)


def _walk(fn: Any, value: Any, root: Any) -> tuple[Any, list[int]]:
    counts = [3, 5]  # the walk adds to what is there
    out = fn(value, root, counts)
    return ("removed" if out is jsonfilter._REMOVED else out), counts


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs, paths=_PATH_LISTS)
def test_the_walks_agree(doc: Any, paths: list[str]) -> None:
    root = compile_paths(paths).root
    fast = _walk(jsonfilter._filter_value, doc, root)
    assert fast == _walk(jsonfilter._filter_value_py, doc, root)
    # Kept values are the input's own objects where the Python walk keeps them whole.
    for key in ("a", "b"):
        if isinstance(doc, dict) and isinstance(fast[0], dict) and key in fast[0]:
            assert (fast[0][key] is doc[key]) == (
                jsonfilter._filter_value_py(doc, root, [0, 0])[key] is doc[key]
            )


def test_a_none_node_removes_and_a_foreign_node_is_refused() -> None:
    assert _walk(jsonfilter._filter_value, {"a": 1}, None) == ("removed", [3, 6])
    with pytest.raises(TypeError):
        jsonfilter._filter_value({"a": 1}, object(), [0, 0])
    with pytest.raises(TypeError):
        jsonfilter._filter_value({"a": 1}, compile_paths(["a"]).root, (0, 0))


@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "é", ""]), st.integers() | st.text(max_size=2)), max_size=6
    )
)
def test_the_pairs_hook_agrees(pairs: list[tuple[str, Any]]) -> None:
    def run(fn: Any) -> Any:
        try:
            return fn(list(pairs))
        except jsonfilter._Duplicate:
            return "duplicate"

    assert run(jsonfilter._pairs) == run(jsonfilter._pairs_py)


_NUMBERS = [
    "0.0",
    "-0.0",
    "1.5",
    "1e16",
    "1E-5",
    "2.5e+3",
    "1e308",
    "1e309",
    "-1e400",
    "0." + "1" * 62,
    "0." + "1" * 63,
]


@pytest.mark.parametrize("text", _NUMBERS)
def test_the_float_hook_agrees(text: str) -> None:
    def run(fn: Any) -> Any:
        try:
            value = fn(text)
            return (value, math.copysign(1, value))
        except JsonRejected as exc:
            return str(exc)

    assert run(jsonfilter._float) == run(jsonfilter._float_py)


def _filter(text: str, paths: list[str]) -> Any:
    try:
        return filter_json(text.encode("utf-8", "surrogatepass"), compile_paths(paths))
    except JsonRejected as exc:
        return f"refused: {exc}"


def _python_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonfilter, "_filter_value", jsonfilter._filter_value_py)
    monkeypatch.setattr(
        jsonfilter,
        "_DECODER",
        json.JSONDecoder(
            object_pairs_hook=jsonfilter._pairs_py,
            parse_float=jsonfilter._float_py,
            parse_constant=jsonfilter._constant,
        ),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs, paths=_PATH_LISTS, edge=st.sampled_from([None, *_EDGES]))
def test_filter_json_gives_the_same_answer_on_either(doc: Any, paths: list[str], edge: str | None) -> None:
    text = edge if edge is not None else json.dumps(doc)
    fast = _filter(text, paths)
    with pytest.MonkeyPatch.context() as mp:
        _python_only(mp)
        assert _filter(text, paths) == fast
