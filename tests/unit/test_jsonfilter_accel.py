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


def _whole_py(text: str, paths: list[str]) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        _python_only(mp)
        return jsonfilter.filter_whole(text, compile_paths(paths).root)


def _fast(body: bytes, paths: list[str]) -> Any:
    assert jsonfilter._jsonfast is not None
    return jsonfilter._jsonfast.filter_whole(body, compile_paths(paths).root)


_DUMPS = st.sampled_from(
    [
        {"ensure_ascii": False, "separators": (",", ":")},
        {"ensure_ascii": True},
        {"indent": 2},
        {"ensure_ascii": False, "indent": "\t", "separators": (" , ", " : ")},
    ]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs, paths=_PATH_LISTS, dumps=_DUMPS)
def test_the_one_pass_filter_gives_filter_wholes_answer(
    doc: Any, paths: list[str], dumps: dict[str, Any]
) -> None:
    text = json.dumps(doc, **dumps)
    expected = _whole_py(text, paths)
    # Clean encoder output is never left to Python when the Python walk takes it whole.
    assert _fast(text.encode(), paths) == expected
    assert _filter(text, paths) == _filter_python(text, paths)


def _filter_python(text: str, paths: list[str]) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        _python_only(mp)
        mp.setattr(jsonfilter, "_jsonfast", None)
        return _filter(text, paths)


_TEXTS = [
    *_EDGES,
    '{"a": "\\u00e9\\u2028\\ud83d\\ude00\\/\\u0000\\u001f\\u007f\\b\\f\\n\\r\\t\\"\\\\"}',
    '{"a": "\\ud83d"}',
    '{"a": "\\ude00"}',
    '{"a": "\\ud83d\\u0041"}',
    '{"a": "\\uZZZZ"}',
    '{"a": "\\x"}',
    '{"\\u0061": 1, "a": 2}',
    '{"a": 1, "\\u0061": 2}',
    '{"é": 1, "\\u00e9": 2}',
    '{"a": -0, "b": -0.0, "c": 0e0, "d": 1E2, "e": 1e-7, "f": 123456789012345678901234567890}',
    '{"a": 01}',
    '{"a": 1.}',
    '{"a": .5}',
    '{"a": -}',
    '{"a": 1e}',
    '{"a": +1}',
    '{"a": tru}',
    '{"a": nulls}',
    '{"a": [1 2]}',
    '{"a" 1}',
    "{a: 1}",
    '\ufeff{"a": 1}',
    '\ufeff\ufeff{"a": 1}',
    '{"a": "\x7f"}',
    '{"a": "' + "x" * 70000 + '"}',
    '{"a": [' + ",".join(["1"] * 3000) + "]}",
    "{" + ",".join(f'"k{i}": {i}' for i in range(200)) + "}",
    '{"a": ' + "[" * 150 + "]" * 150 + "}",
    '{"a": ' + "[" * 250 + "]" * 250 + "}",
    '{"a": 1}\n\t ',
    '\n {"a": 1}',
]
_TEXT_PATHS = [["a"], ["a", "b"], ["**"], ["*"], ["a[]"], ["a.**"], ["[]"], ["f", "d"], ["k7", "k299"]]


@pytest.mark.parametrize("text", _TEXTS, ids=range(len(_TEXTS)))
@pytest.mark.parametrize("paths", _TEXT_PATHS, ids=str)
def test_edge_texts_get_the_same_answer_or_are_left_to_python(text: str, paths: list[str]) -> None:
    body = text.encode("utf-8", "surrogatepass")
    fast = _fast(body[3:] if body.startswith(b"\xef\xbb\xbf") else body, paths)
    if fast is not None:  # taken: exactly what the Python walk gives
        assert fast == _whole_py(body.decode("utf-8-sig"), paths)
    assert _filter(text, paths) == _filter_python(text, paths)


@pytest.mark.parametrize(
    "body", [b"\xff", b'{"a": "\xc3"}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\xf4\x90\x80\x80"}']
)
def test_invalid_utf8_is_left_to_python(body: bytes) -> None:
    assert _fast(body, ["a"]) is None
    with pytest.raises(JsonRejected, match="not valid UTF-8"):
        filter_json(body, compile_paths(["a"]))


# A float already written as repr writes it is copied as it stands (issue 14: the round trip cost
# ~0.5 µs a number); every other one takes the round trip. Both must give the encoder's bytes.
_FLOAT_EDGES = [
    "0.0", "-0.0", "0.00", "1.0", "1.50", "15.0", "100.0", "0.5", "0.05", "0.0001", "0.00001",
    "0.000123", "0.00012345678901234", "123456789012345.0", "1234567890123456.0",
    "123456789012345.6", "12345678901234.5", "0.123456789012345", "0.1234567890123456",
    "0.30000000000000004", "9007199254740993.0", "999999999999999.9", "-999999999999999.0",
    "1e5", "1.5e0", "10.10", "0.10", "-0.0001", "-0.00009",
]  # fmt: skip


def _float_texts() -> list[str]:
    import random

    rnd = random.Random(14)
    out = list(_FLOAT_EDGES)
    for _ in range(20000):
        whole = (
            "0"
            if rnd.random() < 0.35
            else str(rnd.randint(1, 9)) + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(0, 17)))
        )
        frac = "".join(rnd.choice("00001234567899") for _ in range(rnd.randint(1, 19)))
        out.append(("-" if rnd.random() < 0.3 else "") + whole + "." + frac)
    return out


def test_floats_come_out_as_the_encoder_writes_them() -> None:
    root = compile_paths(["x", "y[]"]).root
    wrong = []
    for text in _float_texts():
        got = jsonfilter._jsonfast.filter_whole(f'{{"x": {text}, "y": [{text}]}}'.encode(), root)  # type: ignore[union-attr]
        value = json.dumps(float(text))
        if got != (f'{{"x":{value},"y":[{value}]}}'.encode(), 2, 0):
            wrong.append((text, got))
    assert wrong == []


def test_the_key_cache_tells_nodes_and_keys_apart() -> None:
    # Objects repeat their keys, under different nodes; keys that decode alike are one key; a key
    # longer than the cache's slot and a wildcard's answer go the same way as the rest.
    long_key = "k" * 40
    paths = ["a[].id", "b[].name", "b[].id.x", f"c.{long_key}", "d.*.v", "e.**"]
    doc = {
        "a": [{"id": 1, "name": "n"}, {"name": "m", "id": 2}],
        "b": [{"id": {"x": 1, "y": 2}, "name": "p"}, {"id": {"y": 3}, "name": "q"}],
        "c": {long_key: 1, long_key[:-1]: 2, long_key + "k": 3},
        "d": {"p": {"v": 1, "w": 2}, "q": {"v": 3}},
        "e": {"id": 1, "name": 2},
    }
    text = json.dumps(doc)
    expected = _whole_py(text, paths)
    assert _fast(text.encode(), paths) == expected
    assert json.loads(expected[0]) == {
        "a": [{"id": 1}, {"id": 2}],
        "b": [{"id": {"x": 1}, "name": "p"}, {"id": {}, "name": "q"}],
        "c": {long_key: 1},
        "d": {"p": {"v": 1}, "q": {"v": 3}},
        "e": {"id": 1, "name": 2},
    }
    escaped = '{"a": [{"\\u0069d": 1, "name": 2}, {"id": 3}]}'
    assert _fast(escaped.encode(), paths) == _whole_py(escaped, paths)


def test_the_key_cache_never_answers_for_another_node() -> None:
    # More nodes than cache slots (64), each with the same two keys and the other one allowed: any
    # answer taken from the wrong node's entry keeps or drops the wrong member.
    paths = [f"o{i}.id" if i % 2 else f"o{i}.name" for i in range(200)]
    doc = {f"o{i}": {"id": i, "name": i} for i in range(200)}
    text = json.dumps(doc)
    got = _fast(text.encode(), paths)
    assert got == _whole_py(text, paths)
    assert json.loads(got[0]) == {f"o{i}": ({"id": i} if i % 2 else {"name": i}) for i in range(200)}
