"""HTTP/1.1 heads for the target client, strict and pure: the request head we send, the response
heads we accept.

h11 tracked every exchange until issue 14. Building and validating its events and running its
state machine cost ~45 µs per small request here, about as much as the rest of the relay's
request path, for a head whose grammar fits in a few regular expressions. The grammar below is
h11's own (`h11/_abnf.py`: the same token, field-value, status-line and request-target rules),
plus the strictness `check_head` adds on top of it (issue 11: no bare LF or CR, no obs-fold, one
plain Content-Length). h11 stays the reference: tests/unit/test_http1_vs_h11.py checks with
hypothesis that both accept and refuse the same heads and give the same fields, and the client
still hands chunked bodies to h11 (chunk lines and trailers are where its parsing lives).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
# field-value: visible bytes (and obs-text), single spaces or tabs only between them.
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_TOKEN_RE = re.compile(_TOKEN)
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")
# The same, for a block of CRLF-ended lines in one C call: a match starts only at a line's start
# and ends at its CRLF, so one match per line means that every line is a valid field.
_HEADER_FIELDS = re.compile(rb"(?<=\n)(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*\r\n")
_LENGTH_FIELD = re.compile(rb"\ncontent-length:([^\n]*)")
_DIGITS = re.compile(rb"[ \t]*[0-9]{1,18}[ \t]*\r")
_LENGTH_VALUE = re.compile(rb"[0-9]{1,18}")


class HTTPError(Exception):
    """The target broke the exchange (bad or ambiguous HTTP, closed mid-response)."""


class RequestHeadError(ValueError):
    """A request head that cannot be sent as it is (a field h11 would refuse too)."""


def check_head(head: bytes) -> None:
    """Refuse a response head (status line to blank line) that h11 would accept but that is not
    strict HTTP/1.1: bare LF or lone CR, obs-fold, a Content-Length that is repeated, a list, or
    not plain digits. (The grammar refuses the rest: bad tokens, CR/LF/NUL in values, conflicting
    lengths, unknown or repeated transfer codings.)"""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise HTTPError("bare LF or CR in the response head")
    if b"\n " in head or b"\n\t" in head:
        raise HTTPError("obsolete line folding in the response head")
    lengths = _LENGTH_FIELD.findall(head.lower())
    if len(lengths) > 1:
        raise HTTPError("more than one Content-Length in the response")
    if lengths and _DIGITS.fullmatch(lengths[0]) is None:
        raise HTTPError(f"invalid Content-Length {lengths[0][:30]!r} in the response")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head: header names as sent (`fields`) and lower-cased (`names`), values
    without surrounding whitespace (Transfer-Encoding's lower-cased, as h11 gives it)."""

    http_version: bytes
    status: int
    reason: bytes
    fields: list[tuple[bytes, bytes]]
    names: list[bytes]
    content_length: int | None
    chunked: bool
    raw: bytes  # the head as received, for h11 when the body is chunked


# The clean case in C (gateway/relay/_http1fast.c), wherever it is built for the running Python:
# it takes a head only when this module would accept it, with the same fields, and leaves every
# other to the code below, which gives the refusal (tests/unit/test_http1_accel.py).
try:
    from gateway.relay import _http1fast  # type: ignore[attr-defined]
except ImportError:  # not built here: the Python code below does it all
    _http1fast = None


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse one response head, from the status line to the blank line (included); HTTPError for
    anything h11 or check_head refuses, and for a version other than 1.0/1.1 or CL with TE."""
    if _http1fast is not None:
        taken = _http1fast.parse_head(head)
        if taken is not None:
            version, status, reason, fields, names, length, chunked = taken
            return ResponseHead(version, status, reason, fields, names, length, chunked, head)
    return parse_response_head_py(head)


def parse_response_head_py(head: bytes) -> ResponseHead:
    """parse_response_head in Python: the reference, and every head the C code does not take."""
    check_head(head)
    if not head.endswith(b"\r\n\r\n") or head.startswith(b"\r\n"):
        raise HTTPError("target broke the response: no status line")
    eol = head.index(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(head, 0, eol)
    if status_line is None:
        raise HTTPError(f"target broke the response: illegal status line: {head[: min(eol, 60)]!r}")
    version, code, reason = status_line.groups()
    status = int(code)
    if status < 100:
        raise HTTPError(f"target broke the response: status code {status}")
    if status == 101:
        raise HTTPError("target broke the response: 101 Switching Protocols, but no upgrade was proposed")
    # check_head left only CRLF line ends (and no CR or LF elsewhere).
    fields: list[tuple[bytes, bytes]] = _HEADER_FIELDS.findall(head, eol + 2, len(head) - 2)
    if len(fields) != head.count(b"\r\n") - 2:
        for line in head[eol + 2 : -4].split(b"\r\n"):
            if _HEADER_LINE.fullmatch(line) is None:
                raise HTTPError(f"target broke the response: illegal header line: {line[:60]!r}")
        raise HTTPError("target broke the response: illegal header line")  # not reached
    names = [name.lower() for name, _value in fields]
    length: int | None = None
    chunked = False
    if b"content-length" in names:
        # check_head allowed one, of plain digits: the grammar has stripped its whitespace.
        length = int(fields[names.index(b"content-length")][1])
    if b"transfer-encoding" in names:
        at = [n for n, name in enumerate(names) if name == b"transfer-encoding"]
        if len(at) > 1:
            raise HTTPError("target broke the response: multiple Transfer-Encoding headers")
        value = fields[at[0]][1].lower()
        if value != b"chunked":
            raise HTTPError("target broke the response: Only Transfer-Encoding: chunked is supported")
        fields[at[0]] = (fields[at[0]][0], value)  # as h11 gives it
        chunked = True
    if version not in (b"1.1", b"1.0"):
        raise HTTPError(f"HTTP version {version[:10]!r} in the response")
    if length is not None and chunked:
        raise HTTPError("both Content-Length and Transfer-Encoding in the response")
    return ResponseHead(version, status, reason or b"", fields, names, length, chunked, head)


def request_head(method: str, target: str, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request line and header block, Host first (as h11 writes it; the caller gives exactly
    one Host); RequestHeadError for a method, target, name or value that breaks the grammar."""
    try:
        m, t = method.encode("ascii"), target.encode("ascii")
    except UnicodeEncodeError as exc:
        raise RequestHeadError(f"not ASCII: {exc.object[:40]!r}") from None
    if _TOKEN_RE.fullmatch(m) is None:
        raise RequestHeadError(f"illegal method {m[:20]!r}")
    if _TARGET_RE.fullmatch(t) is None:
        raise RequestHeadError(f"illegal request target {t[:60]!r}")
    host: list[bytes] = []
    rest: list[bytes] = []
    token, value_re = _TOKEN_RE.fullmatch, _FIELD_VALUE_RE.fullmatch
    for name, value in fields:
        if token(name) is None:
            raise RequestHeadError(f"illegal header name {name[:40]!r}")
        if value_re(value) is None:
            raise RequestHeadError(f"illegal value for header {name[:40]!r}")
        lname = name.lower()
        if lname == b"content-length" and _LENGTH_VALUE.fullmatch(value) is None:
            raise RequestHeadError(f"bad Content-Length {value[:20]!r}")
        if lname == b"transfer-encoding" and value != b"chunked":
            raise RequestHeadError("only chunked is sent as a transfer coding")
        (host if lname == b"host" else rest).append(name + b": " + value + b"\r\n")
    if len(host) != 1:
        raise RequestHeadError("a request needs exactly one Host")
    return b"".join((m, b" ", t, b" HTTP/1.1\r\n", host[0], *rest, b"\r\n"))
