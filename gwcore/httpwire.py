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
    items = list(headers)
    named = {token.strip().lower() for k, v in items if k.lower() == "connection" for token in v.split(",")}
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP and k.lower() not in named]
