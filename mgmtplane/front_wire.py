"""HTTP/1.1 pieces of the plane's public listener (mgmtplane.front), pure: no I/O.

The relay route's shape, the response head in one piece of bytes, chunked framing, the cached
status lines and Date. Kept apart from the protocol so each can be read (and tested) alone.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp.http_parser import RawRequestMessage

from gwcore.httpwire import HOP_BY_HOP, strip_hop_headers

_STATUS_LINES: dict[int, bytes] = {}


def is_relay_target(target: str) -> bool:
    """Whether a request-target is the relay route (`/v1/gateways/{id}/targets/{target}/...`),
    judged on the path before any query, as aiohttp's router would."""
    return route(target) is not None


def route(target: str) -> tuple[str, str] | None:
    """The (gateway id, target name) of a relay route's request-target, still percent-encoded."""
    parts = target.split("?", 1)[0].split("/", 6)
    if len(parts) != 7 or parts[1] != "v1" or parts[2] != "gateways" or parts[4] != "targets":
        return None
    return (parts[3], parts[5]) if parts[3] and parts[5] else None


def site_route(target: str) -> tuple[str, str] | None:
    """The (site, target name) of a site relay route's request-target (docs/sites.md), still
    percent-encoded: `/v1/sites/{site}/targets/{target}/...`."""
    parts = target.split("?", 1)[0].split("/", 6)
    if len(parts) != 7 or parts[1] != "v1" or parts[2] != "sites" or parts[4] != "targets":
        return None
    return (parts[3], parts[5]) if parts[3] and parts[5] else None


def response_headers(headers: tuple[tuple[str, str], ...]) -> tuple[list[tuple[str, str]], bool, bool]:
    """The target's headers without hop-by-hop ones, and whether they carry Date and Content-Length,
    in one pass (strip_hop_headers' rules; a Connection header takes its slower, general path)."""
    out = []
    date = length = False
    for key, value in headers:
        lower = key.lower()
        if lower in HOP_BY_HOP:
            if lower == "connection":
                return response_headers(tuple(strip_hop_headers(headers)))
            continue
        if lower == "date":
            date = True
        elif lower == "content-length":
            length = True
        out.append((key, value))
    return out, date, length


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        line = f"HTTP/1.1 {status} {reason}\r\n".encode()
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[status] = line
    return line


class Date:
    """The Date header's value, formatted once a second rather than once a response."""

    second = 0
    text = ""

    @classmethod
    def now(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.text = now, formatdate(now, usegmt=True)
        return cls.text


def head(status: int, headers: list[tuple[str, str]], extra: str) -> bytes:
    # Names are tokens and values hold no CR, LF or NUL: the tunnel's decoder checked both.
    # surrogateescape gives back the exact bytes the target sent.
    lines = "".join([f"{k}: {v}\r\n" for k, v in headers])
    return status_line(status) + (lines + extra + "\r\n").encode("utf-8", "surrogateescape")


def expects_continue(msg: RawRequestMessage) -> bool:
    return msg.version >= (1, 1) and msg.headers.get("Expect", "").lower() == "100-continue"


def chunk(data: bytes) -> list[bytes]:
    """`data` as one chunk of a chunked body, in pieces (the data itself is not copied); none for
    no bytes, since an empty chunk would end the body."""
    return [b"%x\r\n" % len(data), data, b"\r\n"] if data else []


def raw(data: bytes) -> list[bytes]:
    """`data` as it is, for a body of declared length."""
    return [data] if data else []
