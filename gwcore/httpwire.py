"""HTTP rules both ends of the tunnel share: which headers never cross a hop, how the hub names itself.

Pure: no I/O. The gateway's relay, the plane's hub and `mgmtplane forward` all strip the same
headers; the tunnel client trusts a 401/403 only when it carries the hub's header.
"""

from __future__ import annotations

from collections.abc import Iterable

# Connection-level headers never cross a hop (RFC 9110 7.6.1); Host is rebuilt for the target.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

# The hub names itself on its refusals with this header ("code: message"), so a 401/403 from
# something in front of it (a WAF, a load balancer's maintenance page) is not taken for the plane's.
TUNNEL_ERROR_HEADER = "Tunnel-Error"


def strip_hop_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers without hop-by-hop ones (including any named in Connection)."""
    # One pass, one lower() per name; a second pass only when a Connection header names others.
    kept: list[tuple[str, tuple[str, str]]] = []
    named: set[str] | None = None
    for item in headers:
        name = item[0].lower()
        if name not in HOP_BY_HOP:
            kept.append((name, item))
        elif name == "connection":
            tokens = {token.strip().lower() for token in item[1].split(",")}
            named = tokens if named is None else named | tokens
    if named is None:
        return [item for _name, item in kept]
    return [item for name, item in kept if name not in named]
