"""Make asyncio's TLS send the alert when a handshake fails, so a refused gateway hears why.

asyncio's SSLProtocol closes the transport on a handshake error without flushing what OpenSSL
left in its outgoing buffer: the fatal alert (unknown_ca, certificate_expired, ...) is dropped,
and a gateway whose certificate the plane refuses sees only a closed connection
(CPython gh-98078; blocking ssl sockets do send it). Under TLS 1.3 the client finishes its side
of the handshake before the server checks the client certificate, so the refusal then looks
exactly like a plane restarting behind a load balancer, and the gateway could only guess.

The fix is upstream's: flush the outgoing buffer before the transport is torn down. Flushing an
empty buffer is a no-op, so this stays harmless on a Python that already does it.
"""

from __future__ import annotations

import contextlib
import functools
from asyncio import sslproto
from typing import Any

_MARK = "_mgmtplane_sends_alerts"


def install() -> None:
    """Patch asyncio.sslproto.SSLProtocol once per process (idempotent)."""
    cls: Any = sslproto.SSLProtocol
    if getattr(cls, _MARK, False):
        return
    if not (hasattr(cls, "_on_handshake_complete") and hasattr(cls, "_process_outgoing")):
        # Another asyncio than the one this was written against (3.11 to 3.13): leave it alone.
        return
    original = cls._on_handshake_complete

    @functools.wraps(original)
    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> Any:
        if handshake_exc is not None:
            # Never let the flush replace the handshake error the original reports.
            with contextlib.suppress(Exception):
                self._process_outgoing()
        return original(self, handshake_exc)

    cls._on_handshake_complete = on_handshake_complete
    setattr(cls, _MARK, True)
