"""The lean target client's parsing, without sockets: the strict head check and the body framing."""

from __future__ import annotations

import pytest

from gateway.relay.httpclient import HostPool, HTTPError, Response, _Conn, _read_head, check_head
from gateway.relay.ssrf import GuardedResolver


class _Transport:
    """Just enough of an asyncio transport for a connection fed by hand."""

    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _pool() -> HostPool:
    return HostPool(
        "127.0.0.1", 80, GuardedResolver((), ()), host_header="127.0.0.1", connect_timeout=1, read_timeout=1
    )


async def _response(raw: bytes, method: str = "GET", eof: bool = True) -> tuple[HostPool, Response, _Conn]:
    pool, conn = _pool(), _Conn()
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.sent = True  # the request went out whole
    conn.data_received(raw)
    if eof:
        conn.eof_received()
    return pool, Response(pool, conn, await _read_head(conn), method), conn


async def _body(resp: Response) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length:  5 \r\nX-A: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.0 204 No Content\r\n\r\n",
    ],
)
def test_check_head_accepts_strict_heads(head: bytes) -> None:
    check_head(head)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n\tb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\n",
    ],
)
def test_check_head_refuses_what_a_second_parser_could_read_differently(head: bytes) -> None:
    with pytest.raises(HTTPError):
        check_head(head)


async def test_status_headers_and_a_fixed_length_body_that_returns_the_connection() -> None:
    raw = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 5\r\n\r\nhello"
    pool, resp, conn = await _response(raw, eof=False)
    assert resp.status == 302 and resp.content_length == 5
    assert ("Location", "http://169.254.169.254/") in resp.headers
    assert await _body(resp) == b"hello"
    assert pool.idle == (conn,) and not conn.failed


async def test_short_fixed_length_body_is_an_error_not_a_clean_end() -> None:
    pool, resp, conn = await _response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert await resp.read() == b"hello"
    with pytest.raises(HTTPError):
        await resp.read()
    assert conn.failed and not pool.idle


async def test_chunked_body_with_extensions_and_no_trailers_is_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
    pool, resp, conn = await _response(raw, eof=False)
    assert resp.content_length is None
    assert await _body(resp) == b"hello!"
    assert pool.idle == (conn,)


async def test_trailers_or_bytes_after_the_response_end_the_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n"
    pool, resp, conn = await _response(raw, eof=False)
    assert await _body(resp) == b"!"
    assert conn.failed and not pool.idle
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n?"
    pool, resp, conn = await _response(raw, eof=False)
    assert await _body(resp) == b"!"
    assert conn.failed and not pool.idle


async def test_truncated_chunked_body_is_an_error() -> None:
    _pool_, resp, conn = await _response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    with pytest.raises(HTTPError):
        await _body(resp)
    assert conn.failed


async def test_close_delimited_body_and_head_requests() -> None:
    pool, resp, conn = await _response(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert await _body(resp) == b"until close"
    assert not pool.idle
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    pool, resp, conn = await _response(raw, method="HEAD", eof=False)
    assert resp.content_length is None  # the entity's length, not a body's
    assert await resp.read() == b""
    assert pool.idle == (conn,)


async def test_interim_responses_are_skipped_and_101_is_refused() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    _pool_, resp, _conn = await _response(raw, eof=False)
    assert resp.status == 200 and await _body(resp) == b"ok"
    with pytest.raises(HTTPError, match="101 Switching Protocols"):
        await _response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")


async def test_closing_an_unfinished_response_drops_the_connection() -> None:
    pool, resp, conn = await _response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", eof=False)
    assert await resp.read() == b"hel"
    resp.close()
    assert conn.failed and not pool.idle


async def test_complete_says_whether_reading_the_body_can_wait() -> None:
    _pool_, resp, _conn = await _response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", eof=False)
    assert resp.complete  # the relay keeps its first deadline: nothing left to wait for
    _pool_, resp, _conn = await _response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello", eof=False)
    assert not resp.complete
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n!\r\n0\r\n\r\n"
    _pool_, resp, _conn = await _response(raw, eof=False)
    assert not resp.complete  # chunked: not known without parsing
    _pool_, resp, _conn = await _response(b"HTTP/1.1 204 No Content\r\n\r\n", eof=False)
    assert resp.complete


@pytest.mark.parametrize(
    ("fields", "keep"),
    [
        (b"", True),
        (b"Connection: keep-alive\r\n", True),
        (b"Connection: close\r\n", False),
        (b"Connection: Close\r\n", False),
        (b"Connection: keep-alive, close\r\n", False),
        (b"Connection: x-closer\r\n", True),  # "close" as a substring is not the token
        (b"Connection: keep-alive\r\nConnection: close\r\n", False),  # tokens of every field count
        (b"Connection: x\r\nConnection: y\r\n", True),
    ],
)
async def test_connection_tokens_decide_keep_alive(fields: bytes, keep: bool) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + fields + b"\r\nok"
    _pool, resp, _conn = await _response(raw, eof=False)
    assert resp._keep_alive is keep
    assert await _body(resp) == b"ok"
