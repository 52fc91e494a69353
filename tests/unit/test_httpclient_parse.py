"""The lean target client's pure parts: response-head parsing and body framing (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.httpclient import HostPool, HTTPError, Response, _Conn, _parse_head
from gateway.ssrf import GuardedResolver


class _Writer:
    """Just enough of a StreamWriter for a connection nobody writes to."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _pool() -> HostPool:
    return HostPool(
        "127.0.0.1", 80, GuardedResolver((), ()), host_header="127.0.0.1", connect_timeout=1, read_timeout=1
    )


def _response(raw: bytes, method: str = "GET", eof: bool = True) -> tuple[HostPool, Response, _Writer]:
    reader = asyncio.StreamReader()
    head, _, rest = raw.partition(b"\r\n\r\n")
    reader.feed_data(rest)
    if eof:
        reader.feed_eof()
    writer = _Writer()
    pool = _pool()
    status, headers, reusable = _parse_head(head + b"\r\n\r\n")
    conn = _Conn(reader, writer)  # type: ignore[arg-type]
    return pool, Response(pool, conn, status, headers, method, reusable), writer


async def _body(resp: Response) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return b"".join(parts)


def test_parse_head_status_headers_and_keepalive() -> None:
    status, headers, reusable = _parse_head(
        b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nX-A:  b \r\n\r\n"
    )
    assert status == 302
    assert headers == [("Location", "http://169.254.169.254/"), ("X-A", "b")]
    assert reusable
    assert not _parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")[2]
    assert not _parse_head(b"HTTP/1.0 200 OK\r\n\r\n")[2]
    assert _parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n")[2]


@pytest.mark.parametrize(
    "raw", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"]
)
def test_parse_head_refuses_bad_heads(raw: bytes) -> None:
    with pytest.raises(HTTPError):
        _parse_head(raw)


async def test_fixed_length_body_returns_the_connection_to_the_pool() -> None:
    pool, resp, writer = _response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", eof=False)
    assert resp.content_length == 5
    assert await _body(resp) == b"hello"
    assert not writer.closed
    assert len(pool._idle) == 1


async def test_short_fixed_length_body_is_an_error_not_a_clean_end() -> None:
    _pool_, resp, writer = _response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert await resp.read() == b"hello"
    with pytest.raises(HTTPError, match="missing"):
        await resp.read()
    assert writer.closed


async def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n"
    )
    pool, resp, writer = _response(raw, eof=False)
    assert resp.content_length is None
    assert await _body(resp) == b"hello!"
    assert len(pool._idle) == 1 and not writer.closed


async def test_truncated_chunked_body_is_an_error() -> None:
    _pool_, resp, writer = _response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    with pytest.raises(HTTPError):
        await _body(resp)
    assert writer.closed


async def test_close_delimited_body_and_head_requests() -> None:
    pool, resp, writer = _response(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert await _body(resp) == b"until close"
    assert writer.closed and not pool._idle
    pool, resp, writer = _response(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", method="HEAD", eof=False)
    assert await resp.read() == b""
    assert len(pool._idle) == 1


async def test_closing_an_unfinished_response_drops_the_connection() -> None:
    pool, resp, writer = _response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", eof=False)
    assert await resp.read() == b"hel"
    resp.close()
    assert writer.closed and not pool._idle
