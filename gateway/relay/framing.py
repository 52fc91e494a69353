"""Request framing, decided by the gateway (pure): what of the plane's head reaches a target, and
how long the body is.

The plane is untrusted by the filter. Framing is where a request smuggles a second one past it:
a declared length shorter than the body leaves raw bytes on a pooled target connection, and two
lengths (or a length and a transfer coding) let the target pick a different one than we did.
So the gateway never forwards the plane's framing headers: it checks them, keeps one declared
length, sends exactly that many bytes (or its own chunked framing when none was declared), and
writes Host and the framing fields itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.errors import GatewayError
from gwcore.httpwire import HOP_BY_HOP

# Never sent to a target as the plane gave them (RFC 9110 7.6.1 and RFC 9112 6): the hop-by-hop
# fields every hop strips (gwcore.httpwire, Host among them: rebuilt from the target's URL), the
# framing fields (the gateway writes its own) and Expect (the gateway sends whole bodies; it never
# waits for 100 Continue).
NOT_FORWARDED = HOP_BY_HOP | {"content-length", "expect"}
# 18 digits: below 2^63, far above any body the gateway will relay.
_LENGTH = re.compile(r"[0-9]{1,18}")


class RequestFramingError(GatewayError):
    """The plane's request framing is invalid or does not match its body (RESET bad-request)."""


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The plane's headers that may reach a target: no hop-by-hop, framing, Host or Expect fields,
    no Proxy-* field, and none that Connection names."""
    items = list(headers)
    named = {t.strip().lower() for k, v in items if k.lower() == "connection" for t in v.split(",")}
    out = []
    for k, v in items:
        lk = k.lower()
        if lk in NOT_FORWARDED or lk in named or lk.startswith("proxy-"):
            continue
        out.append((k, v))
    return out


def declared_length(headers: Iterable[tuple[str, str]], has_body: bool) -> int | None:
    """The request body's length as the plane declared it (None: not declared); RequestFramingError
    for a length that is invalid, repeated, given with Transfer-Encoding, or given for no body."""
    lengths = []
    coded = False
    for k, v in headers:
        lk = k.lower()
        if lk == "content-length":
            lengths.append(v)
        elif lk == "transfer-encoding":
            coded = True
    if not lengths:
        return None
    if len(lengths) > 1:
        raise RequestFramingError("more than one Content-Length")
    if coded:
        raise RequestFramingError("both Content-Length and Transfer-Encoding")
    value = lengths[0]
    if _LENGTH.fullmatch(value) is None:
        raise RequestFramingError(f"invalid Content-Length {value[:30]!r}")
    length = int(value)
    if not has_body and length:
        raise RequestFramingError(f"Content-Length {length} on a request without a body")
    return length
