"""The firstboot package's one error base."""

from __future__ import annotations

from gateway.errors import GatewayError


class FirstbootError(GatewayError):
    """A first-boot failure a user can act on (message and hint, printed on one line)."""
