"""Hostile inputs: each is denied, within the test timeout and a bounded amount of memory."""

from __future__ import annotations

import gzip
import json
import os
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import pytest

from gateway.filter.metadata_filter import Allowed, Denied, FilterRequest, FilterResponse, filter_response
from gateway.filter.policy import PolicySet, load_policies

POLICY = """\
kind: http
defaults:
  max_body_bytes: 16777216
  max_ratio: 100
rules:
  - name: doc
    path: /doc
    json:
      - items[].name
      - meta.**
    xml:
      elements:
        - root/item/name
        - root/meta/**
  - name: small
    path: /small
    max_body_bytes: 1048576
    json:
      - meta.**
"""

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    d = tmp_path_factory.mktemp("hostile")
    (d / "doc.yaml").write_text(textwrap.dedent(POLICY))
    return load_policies([d])


REQ = FilterRequest("GET", "/doc", {})


def _filter(
    policies: PolicySet, body: bytes, ctype: str = "application/json", **headers: str
) -> Allowed | Denied:
    return filter_response(
        policies, "http", REQ, FilterResponse(200, {"content-type": ctype, **headers}, body)
    )


def _denied(result: Allowed | Denied, reason: str) -> None:
    assert isinstance(result, Denied), result
    assert reason.lower() in result.reason.lower(), result.reason


def _peak(
    policies: PolicySet, body: bytes, ctype: str = "application/json", **headers: str
) -> tuple[Allowed | Denied, int]:
    tracemalloc.start()
    try:
        result = _filter(policies, body, ctype, **headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<root><meta>&lol9;</meta></root>
"""


def test_billion_laughs_is_denied(policies: PolicySet) -> None:
    result, peak = _peak(policies, BILLION_LAUGHS, "application/xml")
    _denied(result, "unparseable XML")
    assert peak < 4 * MiB


def test_xxe_is_denied(policies: PolicySet, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-XXE-FILE")
    body = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><root><meta>&x;</meta></root>'
    ).encode()
    _denied(_filter(policies, body, "text/xml"), "unparseable XML")
    # External DTD and parameter entities too.
    ext = f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file://{secret}"><root/>'.encode()
    _denied(_filter(policies, ext, "text/xml"), "unparseable XML")
    pe = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "file://{secret}"> %p;]><root/>'.encode()
    _denied(_filter(policies, pe, "text/xml"), "unparseable XML")


def test_deep_json_is_denied(policies: PolicySet) -> None:
    depth = 100_000
    body = b'{"meta":' + b"[" * depth + b"]" * depth + b"}"
    result, peak = _peak(policies, body)
    _denied(result, "nested too deeply")
    assert peak < 16 * MiB
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    _denied(_filter(policies, objects), "nested too deeply")


def test_deep_xml_is_denied(policies: PolicySet) -> None:
    depth = 100_000
    body = b"<root><meta>" + b"<a>" * depth + b"</a>" * depth + b"</meta></root>"
    _denied(_filter(policies, body, "text/xml"), "nested deeper")


def test_duplicate_keys_are_denied(policies: PolicySet) -> None:
    _denied(_filter(policies, b'{"items":[{"name":"a","name":"CANARY"}]}'), "duplicate keys")
    _denied(_filter(policies, b'{"meta":{"x":{"y":1,"y":2}}}'), "duplicate keys")


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":[{"name":"\xff\xfe"}]}',
        b'{"items":[{"name":"\xc0\xaf"}]}',  # overlong encoding of '/'
        b'{"items":[{"name":"\xed\xa0\x80"}]}',  # UTF-8-encoded surrogate
        '{"items":[]}'.encode("utf-16"),
    ],
)
def test_invalid_utf8_is_denied(policies: PolicySet, body: bytes) -> None:
    _denied(_filter(policies, body), "UTF-8")


def test_escaped_lone_surrogate_is_denied(policies: PolicySet) -> None:
    # Valid JSON text, but not encodable as UTF-8 output: refuse rather than emit something odd.
    assert isinstance(_filter(policies, b'{"items":[{"name":"\\ud800"}]}'), Denied)


def _gzip_bomb(size: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * MiB
    parts = [comp.compress(chunk) for _ in range(size // MiB)]
    parts.append(comp.flush())
    return b"".join(parts)


def test_gzip_bomb_is_denied_in_bounded_memory(policies: PolicySet) -> None:
    bomb = _gzip_bomb(128 * MiB)
    assert len(bomb) < MiB
    result, peak = _peak(policies, bomb, **{"content-encoding": "gzip"})
    _denied(result, "size or ratio bound")
    # Inflation stops at the ratio bound (100x the compressed size); the buffer may double once.
    assert peak < 2 * 100 * len(bomb) + 4 * MiB


def test_deflate_bomb_and_ratio_bound(policies: PolicySet) -> None:
    bomb = zlib.compress(b'{"meta":"' + b"a" * (8 * MiB) + b'"}', 9)
    _denied(_filter(policies, bomb, **{"content-encoding": "deflate"}), "size or ratio bound")


def test_size_bound_after_decompression(policies: PolicySet) -> None:
    # Hex text compresses only ~2x: within the ratio bound, but it inflates past max_body_bytes.
    text = json.dumps({"meta": os.urandom(600 * 1024).hex()}).encode()
    body = gzip.compress(text, 1)
    assert len(body) < MiB < len(text)
    req = FilterRequest("GET", "/small", {})
    resp = FilterResponse(200, {"content-type": "application/json", "content-encoding": "gzip"}, body)
    _denied(filter_response(policies, "http", req, resp), "size or ratio bound")
    plain = FilterResponse(200, {"content-type": "application/json"}, json.dumps({"meta": "ok"}).encode())
    assert isinstance(filter_response(policies, "http", req, plain), Allowed)


@pytest.mark.parametrize(
    ("encoding", "body", "reason"),
    [
        ("br", b"\x0b\x02\x80{}\x03", "not supported"),
        ("gzip", gzip.compress(b'{"meta":1}')[:-6], "truncated"),
        ("gzip", gzip.compress(b'{"meta":1}') + b"trailing", "trailing"),
        ("gzip", gzip.compress(b'{"meta":1}') * 2, "trailing"),
        ("gzip", b"not gzip at all", "corrupt"),
        ("gzip, gzip", gzip.compress(gzip.compress(b"{}")), "not supported"),
    ],
)
def test_bad_encodings_are_denied(policies: PolicySet, encoding: str, body: bytes, reason: str) -> None:
    _denied(_filter(policies, body, **{"content-encoding": encoding}), reason)


@pytest.mark.parametrize(
    ("ctype", "body", "reason"),
    [
        ("text/xml", b'{"items":[{"name":"CANARY"}]}', "unparseable XML"),
        ("application/json", b"<root><meta>CANARY</meta></root>", "unparseable JSON"),
        ("application/json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "UTF-8"),
        ("application/octet-stream", b'{"items":[]}', "content type"),
        ("image/png", b"\x89PNG\r\n", "content type"),
        ("text/plain", b'{"items":[]}', "content type"),
        ("application/json", gzip.compress(b'{"items":[]}'), "UTF-8"),  # compressed but not labelled
    ],
)
def test_mislabelled_content_is_denied(policies: PolicySet, ctype: str, body: bytes, reason: str) -> None:
    _denied(_filter(policies, body, ctype), reason)


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":[{"name":' + b"9" * 100_000 + b"}]}",
        b'{"meta":' + b"9" * 5000 + b"}",
        b'{"meta":1e999}',
        b'{"items":[{"name":-1e400}]}',
        b'{"meta":0.' + b"1" * 1000 + b"}",
        b'{"meta":Infinity}',
        b'{"meta":-Infinity}',
    ],
)
def test_huge_numbers_are_denied(policies: PolicySet, body: bytes) -> None:
    assert isinstance(_filter(policies, body), Denied)


def test_oversized_body_is_denied_without_parsing(policies: PolicySet) -> None:
    body = b'{"meta":"' + b"x" * (16 * MiB) + b'"}'
    _denied(_filter(policies, body), "size bound")


def test_sane_document_still_passes(policies: PolicySet) -> None:
    out = _filter(policies, b'{"items":[{"name":"n","secret":"CANARY"}],"meta":{"k":[1,2.5,null,true]}}')
    assert isinstance(out, Allowed)
    assert out.body == b'{"items":[{"name":"n"}],"meta":{"k":[1,2.5,null,true]}}'


def test_large_xml_streams_in_bounded_memory(policies: PolicySet) -> None:
    items = b"".join(b"<item><name>n%d</name><secret>CANARY%d</secret></item>" % (i, i) for i in range(5_000))
    body = b"<root>" + items + b"</root>"
    result, peak = _peak(policies, body, "text/xml")
    assert (
        isinstance(result, Allowed) and b"CANARY" not in result.body and b"<name>n4999</name>" in result.body
    )
    assert peak < 4 * len(body)


def test_xml_namespaces_round_trip(policies: PolicySet) -> None:
    import defusedxml.ElementTree as DET

    body = (
        b'<a:root xmlns:a="urn:a" xmlns="urn:d"><a:meta><x xmlns="">plain</x><y>in-d</y>'
        b'<a:z xmlns:a="urn:other">shadowed</a:z></a:meta></a:root>'
    )
    ok = _filter(policies, body, "text/xml")
    # The element `a:z` is written with a prefix that, where it stands, means urn:other: faithful.
    assert isinstance(ok, Allowed), ok
    tree = DET.fromstring(ok.body)
    meta = tree.find("{urn:a}meta")
    assert meta is not None
    assert [c.tag for c in meta] == ["x", "{urn:d}y", "{urn:other}z"]
    assert [c.text for c in meta] == ["plain", "in-d", "shadowed"]


def test_partial_content_is_never_filtered_as_a_document(policies: PolicySet) -> None:
    body = json.dumps({"meta": {"a": 1}}).encode()
    slice_206 = filter_response(
        policies, "http", REQ, FilterResponse(206, {"content-type": "application/json"}, body)
    )
    _denied(slice_206, "partial content")
    _denied(_filter(policies, body, **{"Content-Range": "bytes 0-13/99"}), "partial content")
