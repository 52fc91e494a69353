"""The response-head parser's C twin (gateway/relay/_http1fast.c) against the Python reference.

The C code may leave any head to Python (None), but a head it takes must give exactly the
ResponseHead the Python code gives, and a head the Python code refuses must never be taken.
tests/unit/test_http1_vs_h11.py holds the whole (C first, Python after) to h11 as well.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.relay import http1
from gateway.relay.http1 import HTTPError, ResponseHead, parse_response_head_py
from tests.unit.test_http1_vs_h11 import ISSUE_11_HEADS, heads

pytestmark = pytest.mark.unit

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n"
    b'ETag: "abc"\r\nAccept-Ranges: bytes\r\n\r\n'
)


def _c(head: bytes) -> Any:
    assert http1._http1fast is not None
    return http1._http1fast.parse_head(head)


def _py(head: bytes) -> ResponseHead | str:
    try:
        return parse_response_head_py(head)
    except HTTPError:
        return "refused"


def test_the_c_parser_is_built_and_used() -> None:
    # CI and the image build it; a missing build would silently fall back to the slower parser.
    assert http1._http1fast is not None
    assert _c(NGINX) is not None


def _agree(head: bytes) -> None:
    taken = _c(head)
    if taken is not None:
        assert ResponseHead(*taken, head) == _py(head)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(heads(), st.binary(max_size=80).map(lambda b: b + b"\r\n\r\n")))
@example(NGINX)
@example(b"HTTP/1.1 200\r\n\r\n")
@example(b"HTTP/1.1 200 \r\n\r\n")
@example(b"HTTP/1.0 304 Not Modified\r\nETag: x\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ChUnKeD \r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: \t007 \r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nX:\r\nY: a \t b\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\n\r\nX: y\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nX: a\x0cb\r\n\r\n")
@example(b"HTTP/1.1 200 O\x0bK\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n")
def test_a_head_the_c_parser_takes_is_parsed_as_python_parses_it(head: bytes) -> None:
    _agree(head)


@pytest.mark.parametrize(
    "head",
    [
        NGINX,
        b"HTTP/1.1 200\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nX: \x80\x81 \x82\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
        b"HTTP/1.1 999 ?\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_clean_heads_are_taken(head: bytes) -> None:
    taken = _c(head)
    assert taken is not None and ResponseHead(*taken, head) == _py(head)


@pytest.mark.parametrize(
    "head",
    [
        *ISSUE_11_HEADS,
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 099 X\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: y\x00\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        b"",
    ],
)
def test_refused_heads_are_left_to_python(head: bytes) -> None:
    assert _c(head) is None
    with pytest.raises(HTTPError):
        http1.parse_response_head(head)


def test_only_bytes_are_parsed() -> None:
    with pytest.raises(TypeError):
        _c(bytearray(NGINX))
