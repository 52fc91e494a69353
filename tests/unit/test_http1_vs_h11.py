"""gateway.relay.http1 against h11, the reference it replaced on the hot path (issue 14).

The response side: every head is given to both http1.parse_response_head and to what the client
did before (check_head, then h11's parser and the client's own version and CL+TE checks). Both
must accept or both refuse, and an accepted head must give the same status, version, reason and
fields. The request side: http1.request_head must write the bytes h11 writes, and refuse what
h11 refuses. Heads are drawn from a grammar that lands near the edges (bad tokens, stray CR/LF,
folding, lists and signs in Content-Length, codings, versions, 1xx and 101) as well as raw bytes.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.relay.http1 import HTTPError, RequestHeadError, check_head, parse_response_head, request_head

# --- the reference: what the client did with h11 until issue 14 ------------------------------------


def reference(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]] | str:
    """(version, status, reason, fields) of a final or interim head, or "refused"."""
    try:
        check_head(head)
    except HTTPError:
        return "refused"
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return "refused"
    if type(event) not in (h11.Response, h11.InformationalResponse):
        return "refused"  # NEED_DATA: not one whole head
    assert isinstance(event, h11.Response | h11.InformationalResponse)
    if type(event) is h11.Response:
        if event.http_version not in (b"1.1", b"1.0"):
            return "refused"
        names = [k for k, _v in event.headers]
        if b"content-length" in names and b"transfer-encoding" in names:
            return "refused"
    return event.http_version, event.status_code, bytes(event.reason), list(event.headers.raw_items())


def ours(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]] | str:
    try:
        parsed = parse_response_head(head)
    except HTTPError:
        return "refused"
    return parsed.http_version, parsed.status, parsed.reason, parsed.fields


# --- heads near the grammar's edges ----------------------------------------------------------------


def _mostly(good: list[bytes], bad: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Usually one of `good`, sometimes something from `bad`: both sides of the edge get drawn."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 0 else st.sampled_from(good))


_NAMES = _mostly(
    [b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection", b"X-A", b"Server", b"E~T"],
    st.sampled_from([b"X A", b"", b"X\x00", b"\xff", b"(x)"]) | st.binary(max_size=6),
)
_VALUES = _mostly(
    [b"5", b" 5 ", b"05", b"0", b"chunked", b"Chunked", b"close", b"keep-alive", b"Keep-Alive, close",
     b"a b", b"a\tb", b"\xff\xfe", b"a\x01b", b"9" * 18, b"", b"a  ", b"\x7f"],
    st.sampled_from([b"+5", b"5, 5", b"5,6", b"gzip, chunked", b"9" * 19, b"x\x00y", b"\x0b", b"1_0"])
    | st.binary(max_size=8),
)  # fmt: skip
_EOL = _mostly([b"\r\n"], st.sampled_from([b"\n", b"\r", b"\r\r\n", b" \r\n"]))
_SEP = _mostly([b":", b": ", b":\t", b":  "], st.sampled_from([b" : ", b"::", b" :"]))
_STATUS = _mostly(
    [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 100 Continue",
     b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 200 \xffok\t", b"HTTP/1.1 304 Not Modified",
     b"HTTP/1.1 999 ?", b"HTTP/1.1 503 a\x01b"],
    st.sampled_from([b"HTTP/1.1 101 Switching Protocols", b"HTTP/2.0 200 OK", b"HTTP/1.1 099 X",
                     b"HTTP/1.1 1000 X", b"HTTP/1.1 20 X", b"http/1.1 200 OK", b"HTTP/1.1  200 OK",
                     b"HTTP/1.1 200 a\x0bb", b"HTTP/0.9 200 OK"])
    | st.binary(max_size=16),
)  # fmt: skip


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    parts = [draw(_mostly([b""], st.sampled_from([b"\r\n", b" ", b"\n"]))), draw(_STATUS), draw(_EOL)]
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 19)) == 0:
            parts.append(draw(st.sampled_from([b" folded", b"\tfolded", b"no-colon", b""])))
        else:
            parts += [draw(_NAMES), draw(_SEP), draw(_VALUES)]
        parts.append(draw(_EOL))
    parts.append(draw(_mostly([b"\r\n"], st.sampled_from([b"\n", b""]))))
    return b"".join(parts)


def _whole_head(raw: bytes) -> bytes | None:
    """The head as the client cuts it from its buffer: up to the first blank line."""
    import re

    end = re.search(rb"\n\r?\n", raw)
    return raw[: end.end()] if end else None


@settings(max_examples=1500, deadline=None)
@given(st.one_of(heads(), st.binary(max_size=80)))
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")
@example(b"\r\nHTTP/1.1 200 OK\r\n\r\n")
@example(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nX: \x80\x81 \x82\r\n\r\n")
def test_response_heads_are_read_as_h11_and_check_head_read_them(raw: bytes) -> None:
    head = _whole_head(raw)
    if head is None:
        return
    assert ours(head) == reference(head)


_TOKENS = st.text(alphabet="-!#$%&'*+.^_`|~abzAZ09", min_size=1, max_size=8)
_ANY_TEXT = st.text(alphabet=st.characters(max_codepoint=0x1FF), max_size=8)
_FIELD_NAMES = _mostly(
    [b"Accept", b"X-A", b"User-Agent", b"A~b"],
    st.sampled_from([b"host", b"X A", b"", b"X:"]) | st.binary(max_size=5),
)
_FIELD_VALUES = _mostly(
    [b"*/*", b"", b"a b", b"a\tb", b"\xff", b"\x01", b"x  y"],
    st.sampled_from([b" a", b"a ", b"a\rb", b"a\nb", b"\x00"]) | st.binary(max_size=5),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[bytes, bytes]]]:
    method = draw(
        st.integers(0, 9).flatmap(
            lambda n: _ANY_TEXT if n == 0 else st.sampled_from(["GET", "POST"]) | _TOKENS
        )
    )
    target = draw(
        st.integers(0, 9).flatmap(
            lambda n: _ANY_TEXT if n == 0 else st.sampled_from(["/", "/a?b=c", "/%20", "*", "/~!$"])
        )
    )
    fields = [(b"Host", draw(_mostly([b"t", b"t:8080", b"[::1]"], st.sampled_from([b"a b", b"", b" t"]))))]
    for _ in range(draw(st.integers(0, 4))):
        fields.append((draw(_FIELD_NAMES), draw(_FIELD_VALUES)))
    framing = draw(st.sampled_from([None, (b"Content-Length", b"0"), (b"Content-Length", b"12"),
                                    (b"Transfer-Encoding", b"chunked")]))  # fmt: skip
    if framing is not None:
        fields.append(framing)
    return method, target, fields


def h11_request(method: str, target: str, fields: list[tuple[bytes, bytes]]) -> bytes | str:
    try:
        event = h11.Request(method=method.encode("ascii"), target=target.encode("ascii"), headers=fields)
        return h11.Connection(h11.CLIENT).send(event) or b""
    except (h11.LocalProtocolError, UnicodeEncodeError):
        return "refused"


@settings(max_examples=1500, deadline=None)
@given(requests())
def test_request_heads_are_the_bytes_h11_writes(req: tuple[str, str, list[tuple[bytes, bytes]]]) -> None:
    method, target, fields = req
    try:
        mine: bytes | str = request_head(method, target, fields)
    except RequestHeadError:
        mine = "refused"
    assert mine == h11_request(method, target, fields)


def test_the_client_s_own_heads_go_out_unchanged() -> None:
    head = request_head("GET", "/v2.1/servers?limit=5", [(b"Host", b"t"), (b"Accept", b"*/*")])
    assert head == b"GET /v2.1/servers?limit=5 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n"


ISSUE_11_HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
]


@pytest.mark.parametrize("head", ISSUE_11_HEADS)
def test_issue_11_heads_stay_refused(head: bytes) -> None:
    with pytest.raises(HTTPError):
        parse_response_head(head)
