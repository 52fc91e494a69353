"""JSON allowlist filtering: stream the top levels, parse each element with the C decoder, keep allowed paths.

The top-level container (and the containers directly inside a top-level object, such as Nova's
`{"servers": [...]}`) are scanned here one element at a time, so the parsed Python objects of a
50 MB inventory never exist all at once: peak memory stays near the body size, not 5x of it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from gateway.filter.jsonpath import Allowlist, Node

_WS = re.compile(r"[ \t\n\r]*")
_MAX_FLOAT_TEXT = 64
# Elements are serialized in batches: one encoder call per element would dominate the run time.
_BATCH = 64


class JsonRejected(ValueError):
    """The JSON body cannot be filtered safely; the message is the denial reason."""


class _Duplicate(Exception):
    pass


def _pairs_py(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


def _float_py(text: str) -> float:
    value = float(text)
    if len(text) > _MAX_FLOAT_TEXT or not math.isfinite(value):
        raise JsonRejected("JSON number out of range")
    return value


def _constant(text: str) -> Any:
    raise JsonRejected(f"JSON constant {text} is not allowed")


# The one keep/remove rule: every walk (nested dicts and lists, the streamed top-level array and
# object) asks _filter_value about each value, so a fix to the rule lands everywhere at once.
_REMOVED = object()


def _filter_value_py(x: Any, node: Node | None, counts: list[int]) -> Any:
    """One value under `node` (None: not allowed here): the filtered value, or _REMOVED.

    counts[0] and counts[1] add up kept and removed values: a container counts its members, a
    value kept whole (a subtree or a leaf) or removed counts one.
    """
    if node is None:
        counts[1] += 1
        return _REMOVED
    if node.subtree:
        counts[0] += 1
        return x
    kind = type(x)
    if kind is not dict and kind is not list:  # a scalar: the common case, decided first
        if node.leaf:
            counts[0] += 1
            return x
        counts[1] += 1
        return _REMOVED
    rule, removed = _filter_value_py, _REMOVED  # locals: this loop runs once per value of the body
    if kind is dict:
        keys, wild = node.keys, node.wild
        out: dict[str, Any] = {}
        for k, v in x.items():
            r = rule(v, keys.get(k, wild), counts)
            if r is not removed:
                out[k] = r
        return out
    items = node.items
    if items is None:
        counts[1] += 1
        return _REMOVED
    if items.subtree:
        counts[0] += len(x)
        return x
    kept: list[Any] = []
    for v in x:
        r = rule(v, items, counts)
        if r is not removed:
            kept.append(r)
    return kept


# The three functions above are the reference; the product runs their C twins
# (gateway/filter/_jsonfast.c) wherever they are built for the running Python
# (tests/unit/test_jsonfilter_accel.py holds the two to the same results).
_filter_value: Callable[[Any, Node | None, list[int]], Any] = _filter_value_py
_pairs: Callable[[list[tuple[str, Any]]], dict[str, Any]] = _pairs_py
_float: Callable[[str], float] = _float_py
try:
    from gateway.filter import _jsonfast  # type: ignore[attr-defined]
except ImportError:  # not built for this Python
    _jsonfast = None
else:
    _jsonfast.setup(Node, _Duplicate, JsonRejected, _REMOVED)
    _filter_value, _pairs, _float = _jsonfast.filter_value, _jsonfast.pairs, _jsonfast.parse_float

# Stateless, so made once (a decoder and an encoder cost ~2 us to build, per body).
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_float, parse_constant=_constant)
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _Stream:
    """One pass over the body text; `out` collects the serialized pieces of the filtered document."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.counts = [0, 0]
        self.out: list[str] = []
        self.decoder = _DECODER
        self.encode = _ENCODE

    def ws(self, i: int) -> int:
        m = _WS.match(self.s, i)
        assert m is not None  # the pattern matches the empty string
        return m.end()

    def decode(self, i: int) -> tuple[Any, int]:
        value, end = self.decoder.raw_decode(self.s, i)
        return value, end

    def expect(self, i: int, chars: str) -> str:
        c = self.s[i : i + 1]
        if not c or c not in chars:
            raise JsonRejected("unparseable JSON")
        return c

    def run(self, root: Node) -> None:
        i = self.ws(0)
        if root.subtree:
            value, i = self.decode(i)
            self.counts[0] += 1
            self.out.append(self.encode(value))
        else:
            c = self.s[i : i + 1]
            if c == "[":
                if root.items is None:
                    raise JsonRejected("top-level JSON array is not allowed")
                i = self.array(i, root.items)
            elif c == "{":
                i = self.object(i, root, stream=True)
            else:
                self.decode(i)  # unparseable text is reported as such, not as a scalar
                raise JsonRejected("top-level JSON value is not an object or array")
        if self.ws(i) != len(self.s):
            raise JsonRejected("unparseable JSON: trailing data")

    def array(self, i: int, items: Node | None) -> int:
        """Filter the array at s[i] == '[' element by element; `items` None drops it all."""
        out, counts = self.out, self.counts
        if items is not None:
            out.append("[")
        batch: list[Any] = []
        first = True
        i = self.ws(i + 1)
        if self.s[i : i + 1] == "]":
            i += 1
        else:
            while True:
                x, i = self.decode(i)
                if items is not None:  # None: the array is dropped whole, counted once by the caller
                    r = _filter_value(x, items, counts)
                    if r is not _REMOVED:
                        batch.append(r)
                if len(batch) >= _BATCH:
                    out.append(("" if first else ",") + self.encode(batch)[1:-1])
                    first = False
                    batch.clear()
                i = self.ws(i)
                if self.expect(i, ",]") == "]":
                    i += 1
                    break
                i = self.ws(i + 1)
        if items is not None:
            if batch:
                out.append(("" if first else ",") + self.encode(batch)[1:-1])
            out.append("]")
        return i

    def object(self, i: int, node: Node, *, stream: bool) -> int:
        """Filter the object at s[i] == '{' member by member; with `stream`, child containers too."""
        s, out, counts = self.s, self.out, self.counts
        keys, wild = node.keys, node.wild
        out.append("{")
        seen: set[str] = set()
        first = True
        i = self.ws(i + 1)
        if s[i : i + 1] == "}":
            out.append("}")
            return i + 1
        while True:
            self.expect(i, '"')
            key, i = scanstring(s, i + 1, True)
            if key in seen:
                raise JsonRejected("JSON object has duplicate keys")
            seen.add(key)
            i = self.ws(i)
            self.expect(i, ":")
            i = self.ws(i + 1)
            child = keys.get(key, wild)
            c = s[i : i + 1]
            prefix = ("" if first else ",") + self.encode(key) + ":"
            if stream and c == "[" and (child is None or (not child.subtree and child.items is None)):
                i = self.array(i, None)  # dropped whole, without building it
                counts[1] += 1
            elif stream and c in "[{" and child is not None and not child.subtree:
                out.append(prefix)
                first = False
                i = self.array(i, child.items) if c == "[" else self.object(i, child, stream=False)
            else:
                x, i = self.decode(i)
                kept_value = _filter_value(x, child, counts)
                if kept_value is not _REMOVED:
                    out.append(prefix + self.encode(kept_value))
                    first = False
            i = self.ws(i)
            if self.expect(i, ",}") == "}":
                out.append("}")
                return i + 1
            i = self.ws(i + 1)


# Below this size a body is parsed in one C call and walked once (1 KiB: ~35 us instead of ~85);
# above it, the streamed walk keeps peak memory near the body's size.
WHOLE_MAX = 256 * 1024


def filter_json(body: bytes, allow: Allowlist) -> tuple[bytes, int, int]:
    """Keep only allowed JSON paths; return (body, kept, removed) or raise JsonRejected naming the reason."""
    if len(body) <= WHOLE_MAX:
        if _jsonfast is not None:  # one pass in C over the bytes; None: unusual, the walks decide
            done = _jsonfast.filter_whole(body[3:] if body.startswith(_BOM) else body, allow.root)
            if done is not None:
                return done  # type: ignore[no-any-return]
        text = _text(body)
        done = filter_whole(text, allow.root)
        return done if done is not None else filter_streamed(text, allow.root)
    # No other reference to the text: the stream drops it before the output is joined.
    return _run(_Stream(_text(body)), allow.root)


_BOM = b"\xef\xbb\xbf"


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig") if body.startswith(b"\xef\xbb\xbf") else body.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonRejected("JSON body is not valid UTF-8") from None


def filter_whole(text: str, root: Node) -> tuple[bytes, int, int] | None:
    """The same result as filter_streamed for a document it accepts, from one parse of the whole
    text; None for anything else (the streamed walk then gives the refusal and its reason)."""
    counts = [0, 0]
    try:
        value = _DECODER.decode(text)
        if root.subtree:
            counts[0] += 1
            out = value
        else:
            kind = type(value)
            if (kind is not dict and kind is not list) or (kind is list and root.items is None):
                return None
            out = _filter_value(value, root, counts)
        return _ENCODE(out).encode("utf-8"), counts[0], counts[1]
    except (_Duplicate, JsonRejected, RecursionError, ValueError):
        return None


def filter_streamed(text: str, root: Node) -> tuple[bytes, int, int]:
    """Filter `text` walking its top levels one element at a time (the reference walk)."""
    return _run(_Stream(text), root)


def _run(stream: _Stream, root: Node) -> tuple[bytes, int, int]:
    try:
        stream.run(root)
        stream.s = ""
        joined = "".join(stream.out)
        stream.out.clear()
        encoded = joined.encode("utf-8")
    except _Duplicate:
        raise JsonRejected("JSON object has duplicate keys") from None
    except RecursionError:
        raise JsonRejected("JSON nested too deeply") from None
    except JsonRejected:
        raise
    except UnicodeEncodeError:
        raise JsonRejected("JSON string is not valid Unicode") from None
    except ValueError:
        raise JsonRejected("unparseable JSON") from None
    return encoded, stream.counts[0], stream.counts[1]
